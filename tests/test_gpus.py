"""GPUs for worker processes: the cards nvidia-smi reports, how many workers each holds, and
which worker sees which card. No GPU is needed: nvidia-smi's output is parsed as it prints it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from search.run import gpus
from search.run.gpus import Gpu

GIB = 2**30
# What `nvidia-smi --query-gpu=index,memory.free,memory.total --format=csv,noheader,nounits`
# prints for an idle 80 GB card, a busy one, and one whose memory it cannot read.
SMI = "0, 80000, 81559\n1, 1500, 81559\n2, [N/A], [N/A]\n"


def test_nvidia_smi_lines_become_cards_with_their_free_memory() -> None:
    cards = gpus.parse_query(SMI + "\nNo devices were found\n")
    assert cards == [Gpu("0", 80000 * 2**20), Gpu("1", 1500 * 2**20), Gpu("2", None)]
    # 2 GiB a worker: 39 on the idle card; a busy card or an unknown one still takes one.
    assert [card.workers for card in cards] == [39, 1, 1]
    assert gpus.capacity(cards) == 41


def test_workers_fill_the_cards_that_have_room_in_turn_then_share_them_all() -> None:
    cards = [Gpu("0", 3 * gpus.WORKER_BYTES), Gpu("1", gpus.WORKER_BYTES)]
    assert gpus.assign(cards, 4) == ["0", "1", "0", "0"]
    assert gpus.assign(cards, 6) == ["0", "1", "0", "0", "0", "1"]  # more than fit
    assert gpus.assign(cards, 1) == ["0"]
    assert gpus.assign([], 3) == []  # no GPU: the workers run on the CPU
    assert gpus.summary(gpus.assign(cards, 4)) == "GPU 0: 3 workers, GPU 1: 1 worker"


def test_gpus_chosen_by_number_must_be_on_the_machine() -> None:
    found = gpus.parse_query(SMI)
    assert gpus.parse_list(" 1, 0,1 ") == ["1", "0"]
    assert gpus.choose(["1"], found) == [found[1]]
    assert gpus.choose(None, found) == found
    with pytest.raises(gpus.GpuError, match=r"GPU 5 is not on this machine \(nvidia-smi lists"):
        gpus.choose(["5"], found)
    assert gpus.choose(["5"], []) == [Gpu("5")]  # without nvidia-smi, taken on trust
    for text in ("", "a,b", "0;1"):
        with pytest.raises(gpus.GpuError, match="names no GPU; pass card numbers"):
            gpus.parse_list(text)


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An nvidia-smi on PATH that prints SMI for the query the search makes, and fails else."""
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    (tmp_path / "smi.csv").write_text(SMI)
    expected = " ".join(gpus.QUERY)
    script.write_text(f'#!/bin/sh\n[ "$*" = "{expected}" ] || exit 9\ncat "{tmp_path}/smi.csv"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return script


def test_the_cards_come_from_gpus_else_cuda_visible_devices_else_every_card(
    smi: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [card.index for card in gpus.cards(None)] == ["0", "1", "2"]
    assert gpus.cards(["1"]) == [Gpu("1", 1500 * 2**20)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert [card.index for card in gpus.cards(None)] == ["2", "0"]
    assert [card.index for card in gpus.cards(["1"])] == ["1"]  # --gpus wins
    for hidden in ("", "-1", "GPU-5d4c1b2a"):  # every card hidden, or named by UUID
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert gpus.cards(None) == []


def test_a_machine_without_nvidia_smi_has_no_card_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus.query() == [] and gpus.cards(None) == []
    assert gpus.cards(["0", "1"]) == [Gpu("0"), Gpu("1")]


def test_a_pinned_process_sees_one_card_numbered_as_nvidia_smi_numbers_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.setenv(key, "")  # recorded, so pin's values are undone after the test
        monkeypatch.delenv(key)
    gpus.pin("1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
