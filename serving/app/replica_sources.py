"""What an ingress replica reads from, one copy shared by its two request paths
(:mod:`serving.app.bundle_candidates` and :mod:`serving.app.item_ranking`)."""

from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from serving.app.embeddings import ReplicaEmbeddings
from serving.app.feature_reads import FeastReader, PopularItems
from serving.app.ranker import RankerSlot
from streamrec.runtime.config import Settings


@dataclass
class ReplicaSources:
    """What both request paths of an ingress replica read, one copy each: Feast, the registered
    embeddings and sequential ranker, and the learner's popular items."""

    settings: Settings
    feast: FeastReader
    embeddings: ReplicaEmbeddings
    popular: PopularItems
    ranker: RankerSlot

    @classmethod
    def create(cls, settings: Settings, learner: DeploymentHandle) -> "ReplicaSources":
        embeddings = ReplicaEmbeddings(settings)
        s = settings.serving
        return cls(settings, FeastReader(settings), embeddings, PopularItems(learner),
                   RankerSlot(embeddings.root, s.ranker_model, s.refresh_s))
