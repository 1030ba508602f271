#!/usr/bin/env python3
"""Python's side of the torch-state interop tests (tests/torch_state_test.cc).

  torch_state_interop.py check FILE KIND STEPS
      torch.load a checkpoint written by ckptledger, build torch.optim.KIND over parameters shaped
      as its "state_dict" (grouped as its "optimizer"'s param_groups; "test_param_names" names the
      parameter of each index) and load_state_dict(ckpt["optimizer"]); when the checkpoint has
      param_schedulers, StepLR(...).load_state_dict(ckpt["param_schedulers"][0]) and STEPS more
      scheduler steps. Prints JSON: {"state_equal": bool (every loaded state value equals the
      file's), "layout": {"ours": ..., "python": ...} (key names and value kinds of a group and a
      state entry, ours and those of the same optimizer stepped by Python), "lrs": the learning
      rates after each further scheduler step}.
  torch_state_interop.py write FILE KIND STEPS
      train the test network (the same names and shapes as the C++ test's Net) for STEPS steps
      with torch.optim.KIND and a StepLR(step_size=2, gamma=0.5) stepped per step, torch.save an
      MMEngine-layout checkpoint to FILE, print JSON {"lrs": the learning rates of 5 further
      scheduler steps}.
"""
import json
import sys

import torch

OPTIONS = {
    "SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "Adam": dict(lr=0.01, amsgrad=True),
    "AdamW": dict(lr=0.01, weight_decay=0.05),
    "RMSprop": dict(lr=0.01, momentum=0.5, centered=True),
    "Adagrad": dict(lr=0.1),
    "LBFGS": dict(lr=0.5, history_size=4, max_iter=3),
}


def kind_of(v):
    if isinstance(v, torch.Tensor):
        return "tensor%s" % list(v.shape) if v.dim() == 0 else "tensor"
    return type(v).__name__


def layout(sd):
    group = sd["param_groups"][0]
    state = sd["state"][min(sd["state"])] if sd["state"] else {}
    return {
        "group": [[k, kind_of(v)] for k, v in group.items()],
        "state": [[k, kind_of(v)] for k, v in state.items()],
    }


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def closure_for(opt, params):
    def closure():
        opt.zero_grad()
        loss = sum((p * p).sum() * (i + 1) for i, p in enumerate(params))
        loss.backward()
        return loss
    return closure


def check(path, kind, steps):
    ckpt = torch.load(path, map_location="cpu")
    names = ckpt["test_param_names"]
    sd = ckpt["state_dict"]
    saved = ckpt["optimizer"]
    cls = getattr(torch.optim, kind)

    def make(groups_from):
        params = {}
        groups = []
        for g in groups_from["param_groups"]:
            ps = []
            for i in g["params"]:
                params[i] = torch.nn.Parameter(sd[names[i]].clone())
                ps.append(params[i])
            groups.append(dict(params=ps, lr=g["lr"]))
        return cls(groups), params

    opt, params = make(saved)
    opt.load_state_dict(saved)
    state_equal = True
    for i, entry in saved["state"].items():
        loaded = opt.state[params[i]]
        for k, v in entry.items():
            state_equal = state_equal and same(loaded[k], v)
    # The same optimizer with the same options, stepped by Python itself.
    twin, twin_params = make(saved)
    for g, s in zip(twin.param_groups, saved["param_groups"]):
        for k, v in s.items():
            if k not in ("params", "initial_lr"):
                g[k] = v
    lrs = []
    if ckpt.get("param_schedulers"):
        sched_sd = ckpt["param_schedulers"][0]
        torch.optim.lr_scheduler.StepLR(twin, sched_sd["step_size"], sched_sd["gamma"])
        sched = torch.optim.lr_scheduler.StepLR(opt, sched_sd["step_size"], sched_sd["gamma"])
        sched.load_state_dict(sched_sd)
        for _ in range(steps):
            opt.step(closure_for(opt, list(params.values())))
            sched.step()
            lrs.append([g["lr"] for g in opt.param_groups])
    twin.step(closure_for(twin, list(twin_params.values())))
    twin.step(closure_for(twin, list(twin_params.values())))
    print(json.dumps({"state_equal": state_equal,
                      "layout": {"ours": layout(saved), "python": layout(twin.state_dict())},
                      "lrs": lrs}))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.drop = torch.nn.Dropout(0.25)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def write(path, kind, steps):
    torch.manual_seed(7)
    net = Net()
    cls = getattr(torch.optim, kind)
    opts = dict(OPTIONS[kind])
    lr = opts.pop("lr")
    opt = cls([{"params": list(net.fc1.parameters()) + list(net.bn.parameters())},
               {"params": list(net.fc2.parameters()), "lr": lr / 2}], lr=lr, **opts)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(steps):
        x = torch.randn(16, 4)
        y = torch.randint(0, 3, (16,))

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss
        opt.step(closure)
        sched.step()
    ckpt = {
        "meta": {"epoch": 0, "iter": steps, "seed": 7, "mmengine_version": "0.10.4"},
        "state_dict": net.state_dict(),
        "optimizer": opt.state_dict(),
        "param_schedulers": [sched.state_dict()],
        "message_hub": {"log_scalars": {}, "runtime_info": {"iter": steps}, "resumed_keys": {}},
    }
    torch.save(ckpt, path)
    lrs = []
    for _ in range(5):
        opt.step(closure)
        sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    print(json.dumps({"lrs": lrs}))


if __name__ == "__main__":
    mode, path, kind, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    {"check": check, "write": write}[mode](path, kind, steps)
