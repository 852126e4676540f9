"""Entry points of the multi-process (gloo) tests. They live in an importable module (tests/ is on sys.path) so
that spawned processes can unpickle them, whatever import mode pytest uses for the test files."""
import os

import torch
import torch.distributed as dist


def ddp_flow_grads(rank, world, rendezvous, path, reversible):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    torch.manual_seed(0)
    from _helpers import random_level
    model = random_level(4, 3, ctx=2, reversible=reversible, dtype=torch.float64)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(1)
    x = torch.randn(4, 4, 4, 4, dtype=torch.float64)
    ctx = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    xs, cs = x.chunk(world)[rank], ctx.chunk(world)[rank]
    y, ld = ddp(xs, cs)
    ((y ** 2).mean() - ld.mean()).backward()
    if rank == 0:
        torch.save([p.grad for p in model.parameters()], path)
    dist.barrier()
    dist.destroy_process_group()
    # This process's work is done and written. Leave without the interpreter's exit-time destructors: there gloo's
    # threads aborted one rank in ~1 of 10 pytest runs ("terminate called without an active exception", no Python
    # frame left), whatever the order of teardown.
    os._exit(0)


def ddp_train_rank(rank, world, port, out, args):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from flowkern.models import train as train_cli
    model, _ = train_cli.train(train_cli.parser().parse_args(args + ["--out", out, "--steps", "3",
                                                                    "--sample-every", "0"]))
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    os._exit(0)  # as in ddp_flow_grads: skip the exit-time destructors where gloo's threads can abort
