"""The benchmark network in PyTorch, eager, on the CPU: the speed to match.

    python benchmarks/torch_twin.py DATA.npz --bn none|before --epochs 4 --threads 2
    python benchmarks/torch_twin.py DATA.npz --epochs 1 --images 256    # smallest

DATA.npz holds x_train, y_train, x_val and y_val (NHWC float32 images, integer labels):
benchmarks/throughput.py writes one for each of its runs and calls this script with
`--torch`. Prints one line per epoch: `epoch_time_s <seconds>` (training pass and
validation pass, as Keras's fit with validation_data does); throughput.py compares them
with cvlib's. Needs `pip install -r requirements-bench.txt`.
"""
import argparse
import time

import numpy as np


def block(in_channels, out_channels, bn):
    from torch import nn

    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.1))
    return layers + [nn.ReLU(), nn.MaxPool2d(2)]


def network(widths, dense_units, bn):
    from torch import nn

    layers, channels = [], 3
    for width in widths:
        layers += block(channels, width, bn)
        channels = width
    side = 32 // 2 ** len(widths)
    layers += [nn.Flatten(), nn.Linear(channels * side * side, dense_units, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm1d(dense_units, eps=1e-3, momentum=0.1))
    layers += [nn.ReLU(), nn.Linear(dense_units, 10)]
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", metavar="DATA.npz")
    parser.add_argument("--bn", default="none")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", default="32,64,64")
    parser.add_argument("--dense-units", type=int, default=64)
    parser.add_argument("--images", type=int, default=None,
                        help="train on the first N training images only (default: all)")
    args = parser.parse_args()

    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = np.load(args.data)
    train = slice(0, args.images)
    # NCHW, as PyTorch's convolutions want.
    x_train = torch.from_numpy(data["x_train"][train].transpose(0, 3, 1, 2).copy())
    y_train = torch.from_numpy(data["y_train"][train]).long()
    x_val = torch.from_numpy(data["x_val"].transpose(0, 3, 1, 2).copy())
    y_val = torch.from_numpy(data["y_val"]).long()
    model = network([int(w) for w in args.widths.split(",")], args.dense_units,
                    args.bn != "none")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_function = nn.CrossEntropyLoss()
    for _ in range(args.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train))
        for start in range(0, len(x_train), args.batch_size):
            index = order[start:start + args.batch_size]
            optimizer.zero_grad()
            loss = loss_function(model(x_train[index]), y_train[index])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for start in range(0, len(x_val), args.batch_size):
                loss_function(model(x_val[start:start + args.batch_size]),
                              y_val[start:start + args.batch_size])
        print(f"epoch_time_s {time.perf_counter() - started:.4f}", flush=True)


if __name__ == "__main__":
    main()
