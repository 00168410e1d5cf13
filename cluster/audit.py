"""Gradient-audit metrics and the audit bundle (docs/algorithms.md §1 "Audit bundle", §5.2, §12)."""
from __future__ import annotations

import json

import numpy as np
import torch


def _np(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def angle_deg(a, b) -> float:
    """The angle between two flattened updates, in degrees (nan if either is zero)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(np.degrees(np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0)))) if na and nb else float("nan")


def angles(est: dict, ref: dict, layer_of: dict) -> dict:
    """Angles (degrees) between the update and BPTT's gradient (Ernoult et al. 2020's compute_angleGrad): per layer
    pair n over its forward tensors (W{n}, b{n}, ...), over all forward tensors, and per feedback tensor (B{n})
    apart."""
    def flat(d, ks):
        return np.concatenate([_np(d[k]).ravel() for k in ks])
    forward = [k for k in ref if not k.startswith("B")]
    layers = {}
    for k in forward:
        layers.setdefault(str(layer_of.get(k, 0)), []).append(k)
    return {"layers": {n: angle_deg(flat(est, ks), flat(ref, ks)) for n, ks in sorted(layers.items())},
            "total": angle_deg(flat(est, forward), flat(ref, forward)),
            "feedback": {k: angle_deg(flat(est, [k]), flat(ref, [k])) for k in ref if k.startswith("B")}}


def compare(est: dict, ref: dict) -> dict:
    """Per tensor and in total: cosine, relative L2 error ||g_hat - g||/||g||, norm ratio, sign agreement."""
    def metrics(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        nz = (a != 0) | (b != 0)
        return {"cosine": float(a @ b / (na * nb)) if na and nb else float("nan"),
                "rel_l2": float(np.linalg.norm(a - b) / nb) if nb else float("nan"),
                "norm_ratio": float(na / nb) if nb else float("nan"),
                "sign_agreement": float(np.mean(np.sign(a[nz]) == np.sign(b[nz]))) if nz.any() else 1.0}
    per = {k: metrics(_np(est[k]).ravel(), _np(ref[k]).ravel()) for k in ref}
    total = metrics(np.concatenate([_np(est[k]).ravel() for k in ref]),
                    np.concatenate([_np(ref[k]).ravel() for k in ref]))
    return {"total": total, "per_tensor": per}


def gdu_metrics(est_steps: dict, bptt_steps: dict, scale: dict | None = None) -> dict:
    """Step-wise (GDU) comparison per tensor, series of shape (T2, ...) with t = steps before the end.

    rmse (Laborieux): mean over elements of sqrt(mean_t (EP-BPTT)^2) / max(sqrt(mean_t EP^2), sqrt(mean_t BPTT^2));
    sign_error: mean over t and elements of [EP * BPTT < 0];
    rel_mse (Ernoult): per element sqrt(sum_t (EP-BPTT)^2 / max(sum_t EP^2, sum_t BPTT^2)), mean and std;
    sign_agreement_cumulative: fraction of elements whose cumulative EP and BPTT at the last step agree in sign
    (both non-zero), with the fraction where both are zero.
    `scale` {tensor: c}: the BPTT series multiplied by c first (c scalar or shaped like one time slice: the
    neurons' relation, docs/guide/auditing.md "Step-wise audit").
    """
    out = {}
    scale = scale or {}
    for k in bptt_steps:
        e = _np(est_steps[k]).reshape(len(est_steps[k]), -1)
        b = (_np(bptt_steps[k]) * _np(scale.get(k, 1.0))).reshape(len(bptt_steps[k]), -1)
        den = np.maximum(np.sqrt((e ** 2).mean(0)), np.sqrt((b ** 2).mean(0)))
        num = np.sqrt(((e - b) ** 2).mean(0))
        rmse = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
        den2 = np.maximum((e ** 2).sum(0), (b ** 2).sum(0))
        rel = np.where(den2 > 0, np.sqrt(((e - b) ** 2).sum(0) / np.where(den2 > 0, den2, 1)), 0.0)
        ce, cb = e.sum(0), b.sum(0)
        both = (ce != 0) & (cb != 0)
        out[k] = {"rmse": float(rmse.mean()), "sign_error": float((e * b < 0).mean()),
                  "rel_mse_mean": float(rel.mean()), "rel_mse_std": float(rel.std()),
                  "sign_agreement_cumulative": float((np.sign(ce) == np.sign(cb))[both].mean()) if both.any() else 1.0,
                  "both_zero": float(((ce == 0) & (cb == 0)).mean())}
    return out


def write_bundle(path: str, meta: dict, x, y, params: dict, estimate: dict, bptt: dict,
                 estimate_steps: dict | None = None, bptt_steps: dict | None = None, implicit: dict | None = None) -> None:
    arrays = {"meta": np.array(json.dumps(meta)), "x": _np(x), "y": _np(y)}
    for prefix, d in (("param", params), ("estimate", estimate), ("bptt", bptt),
                      ("estimate_steps", estimate_steps or {}), ("bptt_steps", bptt_steps or {}),
                      ("implicit", implicit or {})):
        arrays.update({f"{prefix}/{k}": _np(v) for k, v in d.items()})
    np.savez(path, **arrays)


def read_bundle(path: str) -> dict:
    """{'meta': dict, 'x', 'y', 'param': {...}, 'estimate': {...}, 'bptt': {...}, ...} as float64 tensors."""
    with np.load(path, allow_pickle=False) as z:
        out = {"meta": json.loads(str(z["meta"])), "x": torch.from_numpy(z["x"]), "y": torch.from_numpy(z["y"])}
        for key in z.files:
            if "/" in key:
                prefix, name = key.split("/", 1)
                out.setdefault(prefix, {})[name] = torch.from_numpy(z[key])
    return out
