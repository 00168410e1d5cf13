"""Prints, as JSON, the TCP addresses the processes of a local Ray (cluster.runtime.ray_setup.init_ray) listen on; run in its own
process by tests/test_cluster.py."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    import ray
    import psutil  # noqa: I001 (the copy ray ships in ray/thirdparty_files, on sys.path once ray is imported)

    from cluster.runtime.ray_setup import init_ray
    init_ray(num_cpus=1)
    try:
        ray.get(ray.remote(lambda: 0).remote())  # a worker too
        mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
        listen = sorted({c.laddr.ip for c in psutil.net_connections(kind="tcp")
                         if c.status == psutil.CONN_LISTEN and c.pid in mine})
        print(json.dumps({"listen": listen, "node_ip": ray.util.get_node_ip_address()}))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
