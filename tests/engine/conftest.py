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


@pytest.fixture
def tokenizer_path(tmp_path):
    """A small BPE tokenizer.json trained on soaktop's pseudo-words (never downloaded), in a
    folder, as --tokenizer takes it."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    from soaktop.engine.load.prompts import word

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]"])
    tok.train_from_iterator([" ".join(word(i) for i in range(j, 4096, 7)) for j in range(7)],
                            trainer)
    path = tmp_path / "tok"
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    return str(path)
