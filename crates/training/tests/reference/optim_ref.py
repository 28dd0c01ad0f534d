# Reference values for crates/training/tests/optimizers.rs (PyTorch 2.15, CPU, float32).
import torch
torch.set_printoptions(precision=10)
p0 = torch.tensor([[0.5, -1.25, 2.0], [0.0, 0.75, -0.3]], dtype=torch.float32)
grads = [
    torch.tensor([[0.1, -0.2, 0.3], [0.05, 0.0, -1.5]]),
    torch.tensor([[-0.4, 0.25, 0.0], [1.0, -0.6, 0.2]]),
    torch.tensor([[0.3, 0.3, -0.7], [-0.2, 0.9, 0.01]]),
]
lrs = [0.01, 0.02, 0.005]
cases = {
    "adamw": lambda p: torch.optim.AdamW([p], lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    "adamw_wd0": lambda p: torch.optim.AdamW([p], lr=1.0, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0),
    "adam": lambda p: torch.optim.Adam([p], lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    "adam_wd": lambda p: torch.optim.Adam([p], lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    "sgd": lambda p: torch.optim.SGD([p], lr=1.0),
    "sgd_momentum_wd": lambda p: torch.optim.SGD([p], lr=1.0, momentum=0.9, weight_decay=0.01),
    "rmsprop": lambda p: torch.optim.RMSprop([p], lr=1.0),
    "rmsprop_momentum_wd": lambda p: torch.optim.RMSprop([p], lr=1.0, momentum=0.9, weight_decay=0.01),
}
for name, make in cases.items():
    p = p0.clone().requires_grad_(True)
    opt = make(p)
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = g.clone()
        opt.step()
    print(name, [float(x) for x in p.detach().flatten()])

# clip_grad_norm_
a = torch.zeros(2, 3, requires_grad=True); b = torch.zeros(4, requires_grad=True)
for max_norm in [1.0, 100.0]:
    a.grad = grads[0].clone(); b.grad = torch.tensor([0.5, -2.0, 1.0, 0.25])
    total = torch.nn.utils.clip_grad_norm_([a, b], max_norm)
    print("clip", max_norm, float(total), [float(x) for x in a.grad.flatten()], [float(x) for x in b.grad])
