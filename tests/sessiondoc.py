"""A session file against the format table of docs/session-format.md, read with h5py alone.

One walker for tests/core/test_session.py and tests/analysis/test_analyses.py (tests/conftest.py
puts tests/ on sys.path).

Placeholders: NAME, VIEW, L, N name one segment; ID and ARRAY may span several (`output_similarity/
NAME`, `layers/L/gate`); MAT (gate|up|down) may stand inside a segment (`MAT_tau`, `joint_MAT`).
Sizes: E and k come from /model (k: an intervened run's own /runs/NAME@top_k for its routers); T and P from /runs/NAME/tokens and prompt_offsets (for the arrays
of a result, T from the run its NAME names); R from an array's `labels`, Lmoe from its `layers`, Q
of the S5 pairs is E(E-1)/2, C is 2 or 3, digits are exact; a symbol the file does not fix (N, V,
Nn, F, Fs, Fr, M, K) may have any length.
"""
import json
import os
import re

import numpy as np

from conftest import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "session-format.md")

# the analyses' result ids (first segment below /analyses) and their kinds (docs/analyses.md)
KINDS = {"weight_similarity": "S1", "neuron_mean_similarity": "S2", "neuron_reordering": "S3",
         "router_similarity": "S4", "router_weight_regression": "S5", "matrix_pca": "S6", "neuron_pca": "S7",
         "output_similarity": "D1", "norm_score_ranks": "D2", "gate_activations": "D3", "routing_map": "D4",
         "expert_load": "load", "expert_tokens": "tokens", "layer_diversity": "diversity", "routing_check": "routing_check",
         "selection_bias": "selection_bias", "intervention_effect": "intervention_effect",
         "expert_importance": "importance", "weight_comparison": "compare_weights",
         "routing_comparison": "compare_routing", "domain_specialisation": "domain"}

PLACEHOLDERS = {"NAME": "(?P<NAME>[^/]+)", "L": r"\d+", "ID": r"[^/]+(?:/[^/]+)*",
                "ARRAY": r"[^/]+(?:/[^/]+)*", "VIEW": r"[^/]+", "N": r"\d+"}
GENERIC = ("ID", "ARRAY")
MAT_RX = r"(?:gate|up|down)"


def _seg_rx(seg):
    if seg in PLACEHOLDERS:
        return PLACEHOLDERS[seg]
    parts = re.split(r"(?<![A-Za-z])MAT(?![A-Za-z])", seg)
    return MAT_RX.join(re.escape(p) for p in parts)


def _path_rx(path):
    return re.compile("^/" + "/".join(_seg_rx(s) for s in path.split("/") if s) + "$")


def parse_doc():
    """The rows of the table: path, rx, kind (group, dataset, attr), attr, dtype, shape, required,
    specificity (how many catch-all ID/ARRAY segments: fewer describes an object more precisely),
    parent (the documented path of the object holding it)."""
    rows = []
    for line in open(DOC, encoding="utf-8"):
        if not line.startswith("| `/"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        path, kind, dtype, shape, required = cells[0].strip("`"), cells[1], cells[2], cells[3], cells[4]
        segs = [s for s in path.split("/") if s]
        attr = None
        if kind.startswith("attr"):
            attr = kind.split("`")[1]
            kind = "attr"
        rows.append(dict(path=path, rx=_path_rx(path), kind=kind, attr=attr, dtype=dtype, shape=shape,
                         required=required == "yes", specificity=sum(s in GENERIC for s in segs),
                         parent="/".join(path.split("/")[:-1]) or "/"))
    assert len(rows) > 60, "the format table (with the /analyses rows) was not found in docs/session-format.md"
    return rows


def dtype_ok(h5py, spec, dt):
    if spec == "string":
        c = h5py.check_string_dtype(dt)
        return c is not None and c.encoding == "utf-8"
    if spec == "vlen uint8":
        return h5py.check_vlen_dtype(dt) == np.dtype("uint8")
    return dt.name in [s.strip() for s in spec.replace(" or ", ",").split(",") if s.strip()]


def shape_ok(spec, shape, sizes):
    if spec == "any":
        return True
    if spec == "scalar":
        return shape in ((), (1,))
    want = [s.strip() for s in spec.strip("[]").split(",")]
    if len(want) != len(shape):
        return False
    for w, s in zip(want, shape):
        if w.isdigit():
            ok = s == int(w)
        elif w == "P+1":
            ok = s >= 2
        elif w == "C":
            ok = s in (2, 3)
        elif w in sizes:
            ok = s == sizes[w]
        else:
            ok = True  # a size the file does not fix (N, V, Nn, F, Fs, Fr, M, K): any length
        if not ok:
            return False
    return True


def _run_sizes(f, name, sizes):
    if name and f"runs/{name}/tokens" in f:
        sizes["T"] = f[f"runs/{name}/tokens"].shape[0]
    if name and f"runs/{name}/prompt_offsets" in f:
        sizes["P"] = f[f"runs/{name}/prompt_offsets"].shape[0] - 1


def walk_against_doc(path, analysis_arrays=True):
    """Every object and attribute matches a documented row (dtype, shape; the most specific row
    decides); numeric datasets are checksummed (fletcher32) and gzip-compressed; *_json attributes
    hold JSON objects; every required row is present under each object its parent path matches.
    Below /analyses: a result is a group with a `kind` and carries every required result attribute;
    every dataset belongs to exactly one result; groups between /analyses and a result, or between
    a result and its arrays, carry no attributes. An attribute row applies to the kind of object
    its path documents (result attributes on results, array attributes on arrays).
    With analysis_arrays, an array of a result the analyses write (KINDS) must be one of the
    arrays the table documents for it. Returns {path: h5py object}."""
    h5py = require("h5py")
    rows = parse_doc()
    holder_kind = {r["path"]: r["kind"] for r in rows if r["kind"] != "attr"}
    result_attrs = [r["attr"] for r in rows if r["kind"] == "attr" and r["required"] and r["path"] == "/analyses/ID"]
    assert "kind" in result_attrs, "docs/session-format.md: the result attributes were not found"
    with h5py.File(path, "r") as f:
        E = int(f["model"].attrs["num_experts"])
        k = int(f["model"].attrs["top_k"])
        objects = {"/": f}
        f.visititems(lambda n, o: objects.__setitem__("/" + n, o))
        results = {p for p, o in objects.items() if p.startswith("/analyses/") and isinstance(o, h5py.Group)
                   and "kind" in o.attrs}
        for p in results:
            for a in result_attrs:
                assert a in objects[p].attrs, f"{p}: a result without its required attribute {a}"
        for p, o in objects.items():
            kind = "dataset" if isinstance(o, h5py.Dataset) else "group"
            sizes = {"E": E, "k": k}
            match = sorted((r for r in rows if r["kind"] == kind and r["rx"].match(p)), key=lambda r: r["specificity"])
            if p.startswith("/analyses/") and kind == "dataset":
                owners = [q for q in results if p.startswith(q + "/")]
                assert len(owners) == 1, f"{p}: belongs to {len(owners)} results ({owners})"
                top = p.split("/")[2]
                assert not analysis_arrays or top not in KINDS or (match and match[0]["specificity"] == 0), \
                    f"{p}: not an array documented for /analyses/{top}"
                m = match[0]["rx"].match(p) if match else None
                _run_sizes(f, m.groupdict().get("NAME") if m else None, sizes)
                if "labels" in o.attrs:
                    sizes["R"] = len(np.atleast_1d(o.attrs["labels"]))
                if "layers" in o.attrs:
                    sizes["Lmoe"] = len(np.atleast_1d(o.attrs["layers"]))
                if "/router_weight_regression/" in p:
                    sizes["Q"] = E * (E - 1) // 2  # the regressed pairs
                if match and "R" in match[0]["shape"]:
                    assert "labels" in o.attrs, f"{p}: shape {match[0]['shape']} but no labels attribute"
            else:
                mr = re.match(r"^/runs/([^/]+)/", p)
                _run_sizes(f, mr.group(1) if mr else None, sizes)
                # an intervened run's FFN routers choose its own k (the attention routers the model's)
                if mr and "top_k" in f[f"runs/{mr.group(1)}"].attrs and "/attention" not in p:
                    sizes["k"] = int(f[f"runs/{mr.group(1)}"].attrs["top_k"])
            assert match, f"{p}: {kind} not described in docs/session-format.md"
            if kind == "dataset":
                r = match[0]
                assert dtype_ok(h5py, r["dtype"], o.dtype), f"{p}: dtype {o.dtype}, documented {r['dtype']}"
                assert shape_ok(r["shape"], o.shape, sizes), f"{p}: shape {o.shape}, documented {r['shape']} ({sizes})"
                if o.dtype.kind in "fi" and o.size:
                    assert o.fletcher32 and o.compression == "gzip", f"{p}: not checksummed and compressed"
            elif p.startswith("/analyses/") and p not in results:
                assert not len(o.attrs), f"{p}: a group inside the result store that is no result has attributes"
            for a in o.attrs:
                arows = sorted((r for r in rows if r["kind"] == "attr" and r["attr"] == a and r["rx"].match(p)
                                and holder_kind.get(r["path"], kind) == kind), key=lambda r: r["specificity"])
                assert arows, f"{p}@{a}: attribute not described in docs/session-format.md (for a {kind})"
                v = o.attrs.get_id(a)
                assert dtype_ok(h5py, arows[0]["dtype"], v.dtype), f"{p}@{a}: dtype {v.dtype}"
                assert shape_ok(arows[0]["shape"], v.shape, sizes), f"{p}@{a}: shape {v.shape}"
                if a.endswith("_json"):
                    assert isinstance(json.loads(o.attrs[a]), dict), f"{p}@{a}: not a JSON object"
        for r in rows:
            if not r["required"] or r["path"].startswith("/analyses/"):
                continue  # result attributes: checked above, on the groups that are results
            if r["kind"] == "attr":
                for p, o in objects.items():
                    if r["rx"].match(p):
                        assert r["attr"] in o.attrs, f"{p}: required attribute {r['attr']} missing"
            else:
                prx = _path_rx(r["parent"])
                leaf = r["path"].rsplit("/", 1)[1]
                for p, o in objects.items():
                    if prx.match(p) and isinstance(o, h5py.Group):
                        assert leaf in o, f"{p}: required {leaf} missing"
        return objects
