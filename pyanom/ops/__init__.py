"""The five hot-path ops, each with backend="auto"|"native"|"torch".

Each lives in the module named by its stem (attention, channel_attention, concentrated, coreset,
knn; see pyanom.ops._backend), which no function name shadows. This package is the only code
that touches pyanom._C.
"""
from pyanom.ops.attention import self_attention
from pyanom.ops.channel_attention import channel_self_attention
from pyanom.ops.concentrated import concentrated_loss
from pyanom.ops.coreset import greedy_coreset
from pyanom.ops.knn import knn_scores
