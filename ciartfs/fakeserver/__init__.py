"""A fake CircleCI v1.1 API with a separate presigned storage host, for the demo and the tests."""

from ciartfs.fakeserver.dataset import demo_dataset
from ciartfs.fakeserver.internal import InternalService
from ciartfs.fakeserver.model import FakeArtifact, FakeBuild, FakeProject, Faults, Recorded
from ciartfs.fakeserver.server import FakeCI
from ciartfs.fakeserver.taskcluster import FakeQueue, FakeRun, FakeTask, FakeTcArtifact

__all__ = ["FakeCI", "FakeProject", "FakeBuild", "FakeArtifact", "Faults", "Recorded", "demo_dataset",
           "FakeQueue", "FakeTask", "FakeRun", "FakeTcArtifact", "InternalService"]
