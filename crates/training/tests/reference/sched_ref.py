# Reference values for crates/training/tests/optimizers.rs (transformers' schedulers, PyTorch StepLR).
import math, torch
from transformers import get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup, get_constant_schedule_with_warmup
def run(make, n):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    s = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step(); s.step()
    return out
print("linear", run(lambda o: get_linear_schedule_with_warmup(o, 3, 10), 12))
print("cosine", run(lambda o: get_cosine_schedule_with_warmup(o, 2, 10), 11))
print("constant", run(lambda o: get_constant_schedule_with_warmup(o, 4), 6))
print("steplr", run(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 10))
print("ceil", math.ceil(10 * 0.15), math.ceil(7 * 0.1))
