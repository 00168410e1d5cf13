"""The distributed runtime: logical nodes on Ray host actors, their data plane (ports, frames, ZeroMQ transport,
wire format checks), the message log, placement, and the coordinator that walks a phase program over them."""
