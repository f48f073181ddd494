"""Training: the jitted step (``step``) and the resumable loop (``loop``)."""

from jscale.train.loop import Progress, evaluate, print_progress, train, versions
from jscale.train.step import TrainState, cross_entropy, init_state, make_eval_step, make_train_step
