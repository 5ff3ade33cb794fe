import pytest

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.session import Session


class Collector(list):
    """A listener that keeps every event, for assertions on the stream itself."""

    def __call__(self, event):
        self.append(event)

    def of(self, cls):
        return [e for e in self if isinstance(e, cls)]


@pytest.fixture
def make_session(tmp_path):
    def make(backend=None, record=False, **config):
        config.setdefault("backend", "fake")
        config.setdefault("model", "fake")
        events = Collector()
        session = Session(
            RunConfig(**config),
            backend or FakeBackend(),
            record_path=tmp_path / "run.jsonl" if record else None,
            listeners=(events,),
        )
        return session, events

    return make
