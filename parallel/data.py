"""Data parallel: the latent batch (several seeds or images at once) split over replicas of the whole layout.

Replica d is the d-th block of ``cfg_degree × sequence_degree`` consecutive ranks (``layout``). Every replica takes ``ceil(batch / dp)`` rows of the batch, so all replicas run the same number of model calls
on the same shapes — FSDP's all-gathers span every rank, and a replica that ran fewer calls would leave the others
waiting. A replica short of rows repeats its last one (or the batch's last) and drops the repeat afterwards. The
noise is drawn for the whole batch, as ComfyUI draws it, before the split, so each row gets the noise it would get
in one process.
"""
import math



def batch_rows(batch: int, dp: int, replica: int) -> tuple[list[int], int]:
    """The batch rows replica ``replica`` samples, padded to ``ceil(batch / dp)``, and how many of them are its own."""
    per = math.ceil(batch / dp)
    own = list(range(replica * per, min(batch, (replica + 1) * per)))
    filler = own[-1] if own else batch - 1
    return own + [filler] * (per - len(own)), len(own)
