"""A mixture-of-experts layer whose experts live on different actors.

    python examples/moe_alltoall.py --experts 4 --tokens 512

Each of E actors holds one expert (a two-layer ReLU MLP) and a shard of the
tokens (shards may differ in size: 97 tokens on 3 actors are 33, 32, 32).
A shared gate picks each token's expert; tokens travel to their expert's
actor with one ``alltoall`` (padded blocks of one capacity, as MoE layers
do: every actor must send blocks of the same shape, so the capacity is the
largest number of tokens any actor sends one expert, agreed with an
allreduce MAX), the experts run, and a second ``alltoall`` brings the
outputs home. The result is checked against the same layer computed in one
process.
"""
from __future__ import annotations

import argparse

import numpy as np

import shoal
import shoal.collective as col

DIM, HIDDEN = 32, 64


def layer_weights(experts: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gate = rng.normal(0, 1, (DIM, experts)).astype(np.float32)
    w1 = rng.normal(0, DIM ** -0.5, (experts, DIM, HIDDEN)).astype(np.float32)
    w2 = rng.normal(0, HIDDEN ** -0.5, (experts, HIDDEN, DIM)).astype(np.float32)
    return gate, w1, w2


def expert_ffn(x, w1, w2):
    return np.maximum(x @ w1, 0) @ w2


@shoal.remote(num_cpus=0)
class ExpertActor:
    def __init__(self, rank: int, experts: int):
        self.rank, self.experts = rank, experts
        self.gate, w1, w2 = layer_weights(experts)
        self.w1, self.w2 = w1[rank], w2[rank]          # this actor's expert only

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        e = self.experts
        choice = (tokens @ self.gate).argmax(1)          # each token's expert
        counts = np.bincount(choice, minlength=e)        # tokens for each expert
        # one capacity for every actor: the alltoall blocks must have one shape
        need = np.array([max(1, int(counts.max(initial=0)))])
        capacity = int(col.allreduce(need, group_name="moe", op=col.ReduceOp.MAX)[0])
        send = np.zeros((e, capacity, DIM), np.float32)  # one padded block per expert
        slots = np.empty(len(tokens), np.int64)
        filled = np.zeros(e, np.int64)
        for i, c in enumerate(choice):
            slots[i] = filled[c]
            send[c, filled[c]] = tokens[i]
            filled[c] += 1
        recv_counts = col.alltoall(None, counts.reshape(e, 1), group_name="moe").reshape(e)
        recv = col.alltoall(None, send, group_name="moe")      # block j came from actor j
        out = np.zeros_like(recv)
        for j in range(e):
            n = recv_counts[j]
            out[j, :n] = expert_ffn(recv[j, :n], self.w1, self.w2)
        back = col.alltoall(None, out, group_name="moe")        # outputs go home
        return back[choice, slots]


def reference(tokens: np.ndarray, experts: int) -> np.ndarray:
    gate, w1, w2 = layer_weights(experts)
    choice = (tokens @ gate).argmax(1)
    return np.stack([expert_ffn(t, w1[c], w2[c]) for t, c in zip(tokens, choice)])


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--tokens", type=int, default=512)
    args = p.parse_args(argv)
    tokens = np.random.default_rng(1).normal(0, 1, (args.tokens, DIM)).astype(np.float32)
    actors = [ExpertActor.remote(r, args.experts) for r in range(args.experts)]
    col.create_collective_group(actors, args.experts, list(range(args.experts)),
                                group_name="moe")
    shards = np.array_split(tokens, args.experts)
    out = np.concatenate(shoal.get([a.forward.remote(s) for a, s in zip(actors, shards)]))
    err = float(np.abs(out - reference(tokens, args.experts)).max())
    print(f"experts={args.experts} tokens={args.tokens} max abs difference from one "
          f"process: {err:.2e}")
    return err


if __name__ == "__main__":
    shoal.init(num_cpus=2)
    try:
        main()
    finally:
        shoal.shutdown()
