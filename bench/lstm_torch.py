#!/usr/bin/env python3
"""The peer for Flotilla's built-in LSTM classifier: the same model in PyTorch, timed the same way.

Model (as train/src/model.rs): stacked LSTM (hidden_size, num_layers, dropout between
layers), multi-head attention pooling (per head s_h(t) = v_h . tanh(W h_t + b), softmax over
time, weighted sum of states; heads concatenated and projected back with tanh), dropout, a
linear classifier; class-weighted cross-entropy ("balanced"), AdamW, gradient-norm clipping
at 1.0. Training: shuffled minibatches each epoch and the loss read back every batch (the
burn trainer checks every batch's loss for divergence). Samples per second counts only the
training pass of an epoch, as the trainer's `samples_per_second` metric does.

--lstm native uses torch.nn.LSTM (oneDNN on CPU, cuDNN on CUDA); --lstm cell writes the
recurrence step by step with the same fused-gate matrix products as the burn trainer.

Prints one JSON line: per-epoch figures and the median over the epochs after the first.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn


class CellLstm(nn.Module):
    """One LSTM layer, gates [i f o g] = x W_ih + h W_hh + b, one step at a time."""

    def __init__(self, inputs, hidden):
        super().__init__()
        bound = 1.0 / hidden**0.5
        self.hidden = hidden
        self.w_ih = nn.Parameter(torch.empty(inputs, 4 * hidden).uniform_(-bound, bound))
        self.w_hh = nn.Parameter(torch.empty(hidden, 4 * hidden).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(4 * hidden).uniform_(-bound, bound))

    def forward(self, x):
        batch, steps, _ = x.shape
        h = x.new_zeros(batch, self.hidden)
        c = x.new_zeros(batch, self.hidden)
        outputs = []
        n = self.hidden
        for t in range(steps):
            gates = x[:, t] @ self.w_ih + h @ self.w_hh + self.bias
            squashed = torch.sigmoid(gates[:, : 3 * n])
            i, f, o = squashed[:, :n], squashed[:, n : 2 * n], squashed[:, 2 * n :]
            g = torch.tanh(gates[:, 3 * n :])
            c = f * c + i * g
            h = o * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, 1)


class Classifier(nn.Module):
    def __init__(self, features, hidden, layers, heads, classes, dropout, lstm):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.native = lstm == "native"
        if self.native:
            self.encoder = nn.LSTM(
                features,
                hidden,
                num_layers=layers,
                batch_first=True,
                dropout=dropout if layers > 1 else 0.0,
            )
        else:
            self.encoder = nn.ModuleList(
                CellLstm(features if index == 0 else hidden, hidden) for index in range(layers)
            )
        self.heads = heads
        self.key = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, heads)
        self.merge = nn.Linear(heads * hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        if self.native:
            states, _ = self.encoder(x)
        else:
            states = x
            for index, layer in enumerate(self.encoder):
                if index > 0:
                    states = self.dropout(states)
                states = layer(states)
        weights = torch.softmax(self.score(torch.tanh(self.key(states))), dim=1)
        pooled = (weights.transpose(1, 2) @ states).reshape(x.shape[0], -1)
        pooled = torch.tanh(self.merge(pooled))
        return self.head(self.dropout(pooled))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--minority-fraction", type=float, default=0.25)
    parser.add_argument("--lstm", choices=["native", "cell"], default="native")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    # The data's values do not change the arithmetic; its shape and class balance are the
    # synthetic generator's.
    x = torch.randn(args.samples, args.seq_len, args.features)
    y = (torch.rand(args.samples) < args.minority_fraction).long()
    counts = torch.bincount(y, minlength=2).clamp(min=1).float()
    class_weights = (args.samples / (2 * counts)).to(device)
    x, y = x.to(device), y.to(device)

    model = Classifier(
        args.features, args.hidden_size, args.num_layers, args.num_heads, 2, args.dropout, args.lstm
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights)
    model.train()

    per_epoch = []
    for _ in range(args.epochs):
        order = torch.randperm(args.samples, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for begin in range(0, args.samples, args.batch_size):
            batch = order[begin : begin + args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            value = loss.item()
            if value != value:
                raise SystemExit("loss is NaN")
        per_epoch.append(args.samples / (time.perf_counter() - start))

    steady = per_epoch[1:] or per_epoch
    print(
        json.dumps(
            {
                "framework": "pytorch",
                "version": torch.__version__,
                "lstm": args.lstm,
                "threads": torch.get_num_threads(),
                "device": str(device),
                "settings": {
                    key: value
                    for key, value in vars(args).items()
                    if key not in ("lstm", "threads", "device")
                },
                "samples_per_second_per_epoch": per_epoch,
                "samples_per_second": statistics.median(steady),
            }
        )
    )


if __name__ == "__main__":
    main()
