"""docs/reference.md is generated from the code: it must equal what the code says now."""

from pathlib import Path

from medssl_utils import reference
from medssl_utils.data.readers import READERS

ROOT = Path(__file__).resolve().parents[2]


def test_committed_reference_is_current():
    page = (ROOT / "docs" / "reference.md").read_text()
    assert page == reference.reference(), "docs/reference.md is stale: run `make reference` and commit it"


def test_reference_lists_every_kind_option_and_parameter():
    text = reference.reference()
    for kind, reader in READERS.items():
        assert f"### `{kind}:`" in text
        for option in reader.options:
            assert f"| `{option.name}` |" in text
    for name in ("labelled_slices", "encoder_lr_scale", "probe_every", "target", "gallery"):
        assert f"| `{name}` |" in text
    assert "| `warmup_epochs` | `float \\| None` | `None` |" in text  # type and default from PretrainConfig
    assert "| B3 |" in text and "`finetune.tasks.<name>:`" in text
