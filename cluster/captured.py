"""A relaxation loop on fixed buffers, replayed as a CUDA graph on a GPU so that a step is not launch-bound.

`StaticLoop(fn, state, K)` owns `state`, a list of tensors; `fn(s) -> s'` is one step that reads, besides s,
only tensors that outlive the loop (parameters, clamped drives, targets), which may change in place between
runs but must never be rebound (rebinding them means building a new loop). `chunks(n)` advances the state n
steps: K at a time (the body s <- fn^K(s), written back into `state`), then the n mod K left.

On CUDA the K-step body is captured once (`torch.cuda.CUDAGraph`) and each chunk is one `replay()`: all kernels
of K steps from one call, at the buffers' fixed addresses. Anywhere else, and on CUDA with capture=False, the
same body runs eagerly on the same buffers, so CPU runs exercise everything but the capture itself.
"""
from __future__ import annotations

import torch

WARMUP = 3  # eager bodies on a side stream before capture (lazy library initialisation stays out of the graph)


class StaticLoop:
    def __init__(self, fn, state: list, K: int, capture: bool | None = None):
        if K < 1:
            raise ValueError(f"StaticLoop: K must be >= 1, got {K}")
        self.fn, self.state, self.K = fn, list(state), int(K)
        self.capture = bool(self.state[0].is_cuda) if capture is None else bool(capture)
        if self.capture and not self.state[0].is_cuda:
            raise ValueError("StaticLoop: capture needs CUDA tensors")
        self.graph = None

    def _body(self, n: int) -> None:
        """state <- fn^n(state), in place."""
        s = self.state
        for _ in range(n):
            s = self.fn(s)
        for dst, src in zip(self.state, s):
            dst.copy_(src)

    def _capture(self) -> None:
        kept = [t.clone() for t in self.state]  # warm-up bodies run for real; the state is put back after
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self._body(self.K)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(self.K)
        for dst, src in zip(self.state, kept):
            dst.copy_(src)
        self.graph = graph

    def chunks(self, n: int):
        """Advance the state n steps; yields the number of steps done after each chunk (K, 2K, ..., n)."""
        done = 0
        while done < n:
            k = min(self.K, n - done)
            if k == self.K and self.capture:
                if self.graph is None:
                    self._capture()
                self.graph.replay()
            else:
                self._body(k)
            done += k
            yield done
