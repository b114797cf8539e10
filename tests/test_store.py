"""ShardStore: sharded, checksummed, resumable on-disk store."""
import json

import pytest
import torch

from src.cache import file_sha256
from src.store import ShardStore

CONFIG = {"model": "tiny", "d": 4, "rng": 0}
N_ROWS, SHARD = 10, 3  # 4 shards: rows [0,3) [3,6) [6,9) [9,10)


def rows_tensor(r: range) -> dict[str, torch.Tensor]:
    """Deterministic per-row content, so any row range can be checked against it."""
    idx = torch.tensor(list(r), dtype=torch.float32)
    return {"g": idx[:, None] * 10 + torch.arange(4, dtype=torch.float32)[None, :],
            "y": torch.tensor(list(r), dtype=torch.int64)}


class Killed(Exception):
    """Stands in for the process being killed mid-run."""


class Counter:
    """A compute function that records the row ranges it was asked for; optionally dies after N calls."""

    def __init__(self, fail_after=None):
        self.calls: list[range] = []
        self.fail_after = fail_after

    def __call__(self, r: range):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise Killed("simulated kill")
        self.calls.append(r)
        return rows_tensor(r)


def make(root, config=CONFIG, n_rows=N_ROWS, shard=SHARD):
    return ShardStore(root, config, n_rows, shard)


def expected_full(n_rows=N_ROWS):
    return rows_tensor(range(n_rows))


def test_fill_computes_all_shards_and_load_concatenates_in_order(tmp_path):
    store = make(tmp_path / "s")
    assert store.n_shards == 4
    compute = Counter()
    assert store.fill("p", compute) == 4
    assert compute.calls == [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    out = store.load("p")
    exp = expected_full()
    assert set(out) == {"g", "y"}
    assert out["g"].shape == (N_ROWS, 4)
    assert torch.equal(out["g"], exp["g"])
    assert torch.equal(out["y"], exp["y"])
    # each row range equals what compute returned for it
    for i in range(store.n_shards):
        r = store.rows(i)
        assert torch.equal(out["g"][r.start:r.stop], rows_tensor(r)["g"])
    # a second fill on the same store computes nothing
    again = Counter()
    assert store.fill("p", again) == 0
    assert again.calls == []


def test_resume_after_killed_run_computes_only_remaining_shards(tmp_path):
    root = tmp_path / "s"
    dying = Counter(fail_after=2)
    with pytest.raises(Killed):
        make(root).fill("p", dying)
    assert len(dying.calls) == 2
    # only the two complete shards have sidecars (the record of a finished shard)
    assert sorted(p.name for p in root.glob("p-*.json")) == ["p-00000.json", "p-00001.json"]

    resumed = Counter()
    store = make(root)
    assert store.fill("p", resumed) == 2
    assert resumed.calls == [range(6, 9), range(9, 10)]

    single = make(tmp_path / "single")
    single.fill("p", Counter())
    a, b = store.load("p"), single.load("p")
    assert torch.equal(a["g"], b["g"]) and torch.equal(a["y"], b["y"])
    assert torch.equal(a["g"], expected_full()["g"])


def _corrupt(path):
    data = bytearray(path.read_bytes())
    for j in range(len(data) - 8, len(data)):  # tail bytes = tensor data
        data[j] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_shard_is_recomputed_alone(tmp_path):
    root = tmp_path / "s"
    make(root).fill("p", Counter())
    shard = root / "p-00001.safetensors"
    before = file_sha256(shard)
    _corrupt(shard)
    assert file_sha256(shard) != before

    compute = Counter()
    store = make(root)
    assert store.fill("p", compute) == 1
    assert compute.calls == [range(3, 6)]
    out = store.load("p")
    assert torch.equal(out["g"], expected_full()["g"])
    assert torch.equal(out["y"], expected_full()["y"])


def test_load_without_fill_on_corrupt_shard_raises(tmp_path):
    root = tmp_path / "s"
    make(root).fill("p", Counter())
    _corrupt(root / "p-00002.safetensors")
    with pytest.raises(RuntimeError, match="p/2"):
        make(root).load("p")


def test_load_with_missing_shard_file_raises(tmp_path):
    root = tmp_path / "s"
    make(root).fill("p", Counter())
    (root / "p-00000.safetensors").unlink()
    with pytest.raises(RuntimeError):
        make(root).load("p")


def test_load_of_unfilled_part_raises(tmp_path):
    store = make(tmp_path / "s")
    store.fill("p", Counter())
    with pytest.raises(RuntimeError):
        store.load("other")


@pytest.mark.parametrize("kwargs", [
    {"config": {**CONFIG, "d": 8}},
    {"n_rows": N_ROWS + 1},
    {"shard": SHARD + 1},
])
def test_mismatched_metadata_recomputes_everything(tmp_path, kwargs):
    root = tmp_path / "s"
    make(root).fill("p", Counter())
    other = make(root, **kwargs)
    assert other.missing("p") == list(range(other.n_shards))  # no old shard counts as done
    compute = Counter()
    done = other.fill("p", compute)
    assert done == other.n_shards == len(compute.calls)
    n = kwargs.get("n_rows", N_ROWS)
    assert torch.equal(other.load("p")["g"], expected_full(n)["g"])


def test_same_config_reopen_reuses(tmp_path):
    root = tmp_path / "s"
    config = {**CONFIG, "dims": (1, 2)}  # stored as a JSON list; must still match on reopen
    make(root, config=config).fill("p", Counter())
    compute = Counter()
    assert make(root, config=dict(config)).fill("p", compute) == 0
    assert compute.calls == []


def test_wrong_row_count_is_rejected(tmp_path):
    store = make(tmp_path / "s")
    with pytest.raises(ValueError, match="rows"):
        store.fill("p", lambda r: {"g": torch.zeros(len(r) + 1, 4)})
    assert not store.is_valid("p", 0) and not (tmp_path / "s" / "p-00000.json").exists()
    with pytest.raises(ValueError):
        store.write("p", 3, {"g": torch.zeros(3, 4)})  # last shard has 1 row
    assert not (tmp_path / "s" / "p-00003.safetensors").exists()


def test_meta_records_config_and_sidecars_record_sha_rows_and_shapes(tmp_path):
    root = tmp_path / "s"
    store = make(root)
    store.fill("p", Counter())
    meta = json.loads((root / "meta.json").read_text())
    assert meta["config"] == CONFIG
    assert meta["n_rows"] == N_ROWS and meta["shard_size"] == SHARD
    assert "shards" not in meta  # per-shard records live in sidecars, so writers never share a file
    assert sorted(p.name for p in root.glob("p-*.json")) == [f"p-{i:05d}.json" for i in range(4)]
    for i, (start, stop) in enumerate([(0, 3), (3, 6), (6, 9), (9, 10)]):
        rec = json.loads((root / f"p-{i:05d}.json").read_text())
        assert rec["rows"] == [start, stop]
        assert rec["sha256"] == file_sha256(root / f"p-{i:05d}.safetensors")
        assert len(rec["sha256"]) == 64
        assert rec["shapes"] == {"g": [stop - start, 4], "y": [stop - start]}
        assert rec["dtypes"] == {"g": "float32", "y": "int64"}
        assert rec["store"] == store.fingerprint and rec["rank"] == 0


def test_meta_json_is_written_once(tmp_path):
    root = tmp_path / "s"
    make(root).fill("p", Counter())
    before = (root / "meta.json").stat().st_mtime_ns
    store = make(root)
    store.fill("q", Counter())
    assert (root / "meta.json").stat().st_mtime_ns == before


def test_sidecar_of_other_rows_or_garbage_is_not_trusted(tmp_path, caplog):
    root = tmp_path / "s"
    make(root).fill("p", Counter())
    side = root / "p-00001.json"
    rec = json.loads(side.read_text())
    side.write_text(json.dumps({**rec, "rows": [0, 3]}))
    (root / "p-00002.json").write_text("{not json")
    store = make(root)
    assert store.missing("p") == [1, 2]
    compute = Counter()
    assert store.fill("p", compute) == 2
    assert compute.calls == [range(3, 6), range(6, 9)]
    assert torch.equal(store.load("p")["g"], expected_full()["g"])


def test_file_written_but_sidecar_missing_is_recomputed(tmp_path):
    """A writer killed between the shard file and its sidecar leaves an unrecorded file: not used."""
    root = tmp_path / "s"
    make(root).fill("p", Counter())
    (root / "p-00003.json").unlink()
    compute = Counter()
    assert make(root).fill("p", compute) == 1
    assert compute.calls == [range(9, 10)]


def test_concurrent_writers_of_disjoint_and_duplicate_shards(tmp_path):
    """Two stores on one folder (as two ranks): disjoint shards and a duplicated one all end valid."""
    root = tmp_path / "s"
    a, b = make(root), make(root)
    for i in (0, 2, 3):
        a.write("p", i, rows_tensor(a.rows(i)), rank=0)
    for i in (1, 3):
        b.write("p", i, rows_tensor(b.rows(i)), rank=1)
    ranks = {json.loads((root / f"p-{i:05d}.json").read_text())["rank"] for i in range(4)}
    assert ranks == {0, 1}
    assert make(root).missing("p") == []
    assert torch.equal(make(root).load("p")["g"], expected_full()["g"])


def test_load_stacked_streams_parts_into_one_buffer_in_the_requested_dtype(tmp_path):
    store = make(tmp_path / "s")
    store.fill("a", Counter())
    store.fill("b", lambda r: {"g": -rows_tensor(r)["g"], "y": rows_tensor(r)["y"]})
    G = store.load_stacked(["a", "b"], "g", dtype=torch.float16)
    assert G.shape == (2, N_ROWS, 4) and G.dtype == torch.float16
    assert torch.equal(G[0].float(), expected_full()["g"]) and torch.equal(G[1].float(), -expected_full()["g"])
    _corrupt(tmp_path / "s" / "b-00002.safetensors")
    with pytest.raises(RuntimeError, match="b/2"):
        store.load_stacked(["a", "b"])


def test_parts_are_independent(tmp_path):
    store = make(tmp_path / "s")
    store.fill("a", Counter())
    compute = Counter()
    assert store.fill("b", lambda r: {"g": -rows_tensor(r)["g"]}) == 4
    assert torch.equal(store.load("b")["g"], -store.load("a")["g"])
    assert store.fill("a", compute) == 0
