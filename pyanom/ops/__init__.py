"""The five hot-path ops, each with backend="auto"|"native"|"torch".

This package is the only code that touches pyanom._C.
"""
from pyanom.ops.attention import self_attention
from pyanom.ops.channel_self_attention import channel_self_attention
from pyanom.ops.concentrated_loss import concentrated_loss
from pyanom.ops.coreset import greedy_coreset
from pyanom.ops.knn import knn_scores
