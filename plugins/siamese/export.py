"""The Siamese detector's inference as one traceable module, for pyanom.export."""

from __future__ import annotations

import torch
from torch import nn

from pyanom.export.graph import nearest_neighbour


class SiameseGraph(nn.Module):
    """Embedding, distance to the normal centroid as the score and, for the nearest-neighbour
    decision, the label of the nearest training embedding (constants of the graph)."""

    def __init__(self, detector, knn_chunk: int):
        super().__init__()
        if detector.network is None:
            raise RuntimeError(f"{detector.name}: not fitted")
        self.network = detector.network.eval()
        self.knn_chunk = int(knn_chunk)
        self.nearest_neighbour = detector.config.decision == "nearest_neighbour"
        embeddings = detector.train_embeddings.detach().float()
        self.register_buffer("normal_centroid", detector.normal_centroid.detach().float())
        self.register_buffer("train_embeddings", embeddings)
        self.register_buffer("train_sq_norms", (embeddings * embeddings).sum(1))
        self.register_buffer("train_labels", detector.train_labels.detach().bool())

    def forward(self, images: torch.Tensor):
        embedding = self.network(images)["embedding"]
        scores = torch.linalg.vector_norm(embedding - self.normal_centroid, dim=1)
        if not self.nearest_neighbour:
            return scores, None
        _, nearest = nearest_neighbour(embedding, self.train_embeddings, self.train_sq_norms, self.knn_chunk)
        return scores, None, self.train_labels[nearest]
