"""Tests of the moerging Python package (and so of libmoerging.so) against numpy float64 references.

Fresh random experts and inputs every run (the seed is printed; MOERGING_TEST_SEED repeats a run). The
experts are written here as PEFT adapter directories straight from the documented formats. The ```python examples of
the repository's README and the package's README run here as they stand, read from the source tree. The wheel
builder's tests (test_wheel.py) run here too. Run:

    MOERGING_LIBRARY=.../libmoerging.so PYTHONPATH=interop/python python3 test_moerging.py [--junit FILE]
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import unittest.mock
import xml.sax.saxutils

import numpy as np

import moerging
import test_wheel

SEED = int(os.environ.get("MOERGING_TEST_SEED", str(time.time_ns() % 2**32)))
# Set (by CMake) when the library is the NativeAOT build, which refuses every GPU backend as CPU-only.
CPU_ONLY = os.environ.get("MOERGING_EXPECT_CPU_ONLY") == "1"
# Set by check_wheel.py, which runs this suite in a virtual environment the wheel was installed into.
WHEEL = os.environ.get("MOERGING_EXPECT_WHEEL") == "1"
SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # interop/python
EXPERTS, D_IN, D_OUT, D_OUT_V = 4, 12, 10, 6
MODULES = {"model.layers.0.mlp.up_proj": (D_IN, D_OUT), "model.layers.0.mlp.gate_proj": (D_IN, D_OUT_V)}


def write_safetensors(path, tensors):
    """F32 tensors as safetensors: u64 header length, JSON header (space-padded to 8 bytes), data."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_adapter(directory, rank, alpha, rslora, factors, **config_fields):
    os.makedirs(directory)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": rslora,
              "target_modules": sorted({m.rsplit(".", 1)[1] for m in factors}), "bias": "none", "use_dora": False,
              **config_fields}
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
    write_safetensors(os.path.join(directory, "adapter_model.safetensors"), tensors)


def draw_expert(rng, modules):
    """A random LoRA expert over modules {name: (d_in, d_out)}: rank 1 to 6, alpha in [0.5, 32), rsLoRA or not, and
    per module its float32 factors A [rank, d_in], B [d_out, rank] with their scaling."""
    rank = int(rng.integers(1, 7))
    alpha = float(rng.uniform(0.5, 32))
    rslora = bool(rng.integers(0, 2))
    factors = {}
    for module, (d_in, d_out) in modules.items():
        a = rng.normal(0, 1 / np.sqrt(d_in), (rank, d_in)).astype(np.float32)
        b = rng.normal(0, 1 / np.sqrt(rank), (d_out, rank)).astype(np.float32)
        factors[module] = (a, b, alpha / (np.sqrt(rank) if rslora else rank))
    return {"rank": rank, "alpha": alpha, "rslora": rslora, "factors": factors}


def write_expert(directory, expert):
    write_adapter(directory, expert["rank"], expert["alpha"], expert["rslora"],
                  {m: f[:2] for m, f in expert["factors"].items()})


def readme_python_block(path):
    """The one ```python block of a README, compiled under the README's name and line numbers (so a traceback points
    into the README)."""
    if not os.path.isfile(path):  # a failure, not a skip: the suite always runs from the source tree
        raise AssertionError(f"{path} is not there: this suite checks the examples of the source tree's READMEs")
    with open(path, encoding="utf-8") as file:
        text = file.read()
    blocks = list(re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S))
    if len(blocks) != 1:
        raise AssertionError(f"{path} has {len(blocks)} ```python blocks, not one")
    lines_before = text.count("\n", 0, blocks[0].start(1))
    return compile("\n" * lines_before + blocks[0].group(1), path, "exec")


def capture_stderr(call):
    """call() with file descriptor 2 sent to a file (the library writes there, not to sys.stderr); returns its
    result and what was written."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as file:
        saved = os.dup(2)
        os.dup2(file.fileno(), 2)
        try:
            result = call()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        file.seek(0)
        return result, file.read().decode("utf-8")


def arrow_prototypes(experts, module):
    """Each expert's unit top right singular vector of B A at the module, float64."""
    return np.array([np.linalg.svd(e["factors"][module][1].astype(np.float64)
                                   @ e["factors"][module][0].astype(np.float64))[2][0] for e in experts])


def reference_forward(experts, module, x, base, ids, weights):
    """y = base + sum over slots of w * s * B (A x), float64."""
    d_out = experts[0]["factors"][module][1].shape[0]
    y = np.zeros((x.shape[0], d_out)) if base is None else base.astype(np.float64)
    x = x.astype(np.float64)
    for t in range(x.shape[0]):
        for e, w in zip(ids[t], weights[t]):
            if e >= 0:
                a, b, s = experts[e]["factors"][module]
                y[t] += w * s * (b.astype(np.float64) @ (a.astype(np.float64) @ x[t]))
    return y


def assert_close(test, y, reference, base, slots):
    """|y - y_ref| <= 1e-5 * max|y_ref - base| + (slots + 1) * 2^-24 * |y_ref|, element by element."""
    update = reference - (0 if base is None else base)
    scale = np.abs(update).max()
    test.assertGreater(scale, 0, "the reference update is zero; the check would prove nothing")
    bound = 1e-5 * scale + (slots + 1) * 2.0**-24 * np.abs(reference)
    error = np.abs(y.astype(np.float64) - reference)
    worst = np.argmax(error - bound)
    test.assertTrue(np.all(error <= bound), f"output {worst} is {y.flat[worst]}, expected {reference.flat[worst]} "
                                            f"(error {error.flat[worst]:.3g} > bound {bound.flat[worst]:.3g})")


def check_routing(test, scores, ids, weights):
    """Each row of ids must be a valid top-k of the float64 scores (up to a slack for near ties) and weights the
    softmax of the kept scores within 1e-5. Returns the reference weights."""
    reference = np.zeros(ids.shape)
    for t in range(ids.shape[0]):
        s, chosen = scores[t], ids[t]
        slack = 1e-4 * (1 + np.abs(s).max())
        test.assertEqual(len(set(chosen)), len(chosen), f"token {t}: repeated experts {chosen}")
        test.assertTrue(np.all(np.diff(s[chosen]) <= slack), f"token {t}: {chosen} not in descending score order")
        dropped = np.setdiff1d(np.arange(len(s)), chosen)
        if dropped.size:
            test.assertLessEqual(s[dropped].max(), s[chosen].min() + slack, f"token {t}: a dropped expert outscores")
        kept = np.exp(s[chosen] - s[chosen].max())
        reference[t] = kept / kept.sum()
        np.testing.assert_allclose(weights[t], reference[t], rtol=0, atol=1e-5, err_msg=f"token {t}")
    return reference


class EngineTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rng = np.random.default_rng(SEED)
        cls.root = tempfile.mkdtemp(prefix="moerging-python-")
        cls.experts, cls.paths = [], []
        for e in range(EXPERTS):
            expert, path = draw_expert(cls.rng, MODULES), os.path.join(cls.root, f"expert-{e}")
            write_expert(path, expert)
            cls.experts.append(expert)
            cls.paths.append(path)
        cls.engine = moerging.Engine("cpu", cpu_threads=2)
        cls.session = cls.engine.session()
        cls.library = moerging.Library(cls.paths)
        cls.up = cls.library.module("up_proj")
        cls.gate = cls.library.module("layers.0.mlp.gate_proj")

    @classmethod
    def tearDownClass(cls):
        cls.session.close()
        cls.library.close()
        cls.engine.close()
        shutil.rmtree(cls.root)

    def normal(self, *shape):
        return self.rng.normal(size=shape).astype(np.float32)

    def copy_expert(self, e, relative, **config_fields):
        """Expert e written again at root/relative, with config_fields added to its adapter_config.json."""
        expert, path = self.experts[e], os.path.join(self.root, relative)
        write_adapter(path, expert["rank"], expert["alpha"], expert["rslora"],
                      {m: f[:2] for m, f in expert["factors"].items()}, **config_fields)
        self.addCleanup(shutil.rmtree, os.path.join(self.root, relative.split("/")[0]))
        return path

    def test_library(self):
        self.assertEqual(self.library.expert_count, EXPERTS)
        self.assertEqual(self.library.expert_names, [f"expert-{e}" for e in range(EXPERTS)])
        self.assertEqual([m.name for m in self.library.modules],
                         ["base_model.model.model.layers.0.mlp.gate_proj", "base_model.model.model.layers.0.mlp.up_proj"])
        self.assertEqual((self.up.input_dim, self.up.output_dim, self.up.expert_count), (D_IN, D_OUT, EXPERTS))
        self.assertEqual(self.up.max_rank, max(e["rank"] for e in self.experts))
        self.assertEqual(self.engine.backend, "cpu")
        self.assertTrue(self.engine.backend_reason)

    def run_readme_example(self, readme):
        """Runs the README's ```python block (its own text) in a fresh directory holding adapters/math, adapters/code
        and adapters/legal (random experts with the module layers.0.self_attn.q_proj), given x, y_base and the
        decision arrays ids and weights; then its y must be y_base plus the Arrow top-2 mixture twice (either
        README's example adds it twice: by forward_assigned and the in-place forward, or by two forwards), and
        expert_ids, expert_weights the reference top-2 of |x . p_e| at temperature 1 (the default without
        arrow_config), which ids and weights must hold too."""
        code = readme_python_block(readme)
        module, tokens = "model.layers.0.self_attn.q_proj", 7
        experts = [draw_expert(self.rng, {module: (D_IN, D_OUT)}) for _ in range(3)]
        directory = tempfile.mkdtemp(prefix="moerging-readme-", dir=self.root)
        for name, expert in zip(("math", "code", "legal"), experts):
            write_expert(os.path.join(directory, "adapters", name), expert)
        x, y_base = self.normal(tokens, D_IN), self.normal(tokens, D_OUT)
        given_ids, given_weights = np.full((tokens, 2), -7, np.int32), np.full((tokens, 2), np.nan, np.float32)
        namespace = {"x": x, "y_base": y_base.copy(), "ids": given_ids, "weights": given_weights}
        here = os.getcwd()
        os.chdir(directory)  # the example's adapter paths are relative
        try:
            exec(code, namespace)
        finally:
            os.chdir(here)
            for name in ("router", "library"):
                if name in namespace:
                    namespace[name].close()
        y, expert_ids, expert_weights = namespace["y"], namespace["expert_ids"], namespace["expert_weights"]
        self.assertTrue(np.array_equal(namespace["y_base"], y_base), "the example changed y_base")
        self.assertEqual((y.dtype, y.shape, expert_ids.shape), (np.float32, (tokens, D_OUT), (tokens, 2)))
        scores = np.abs(x.astype(np.float64) @ arrow_prototypes(experts, module).T)
        check_routing(self, scores, expert_ids, expert_weights)
        self.assertTrue(np.array_equal(namespace["ids"], expert_ids), "ids do not hold the decision")
        self.assertEqual(namespace["weights"].tobytes(), expert_weights.tobytes(), "weights do not hold the decision")
        update = reference_forward(experts, module, x, None, expert_ids, expert_weights)
        assert_close(self, y, y_base.astype(np.float64) + 2 * update, y_base, 4)

    def test_readme_example(self):
        self.run_readme_example(os.path.normpath(os.path.join(SOURCE_TREE, os.pardir, os.pardir, "README.md")))

    def test_package_readme_example(self):
        """The package's own README (the wheel's description) has an example too."""
        self.run_readme_example(os.path.join(SOURCE_TREE, "README.md"))

    def test_library_names(self):
        first, second = self.copy_expert(0, "run1/adapter"), self.copy_expert(1, "run2/adapter")
        automatic = ["run1/adapter", "run2/adapter"]
        for names, expected in ((None, automatic), ([None, None], automatic), (["math", None], ["math", "adapter"]),
                                (("x", "y"), ["x", "y"])):
            with self.subTest(names=names), moerging.Library([first, second], names=names) as library:
                self.assertEqual(library.expert_names, expected)
        with moerging.Library([first, first], names=["x", "y"]) as library:
            self.assertEqual(library.expert_names, ["x", "y"])
        with moerging.Library((d for d in [first, second]), names=["a", "b"]) as library:  # an iterator, read once
            self.assertEqual((library.expert_names, library.directories), (["a", "b"], [first, second]))

        # A dict names the experts in its order: "code" is expert 0, and its factors are the second directory's.
        with moerging.Library({"code": second, "math": first}) as library:
            self.assertEqual(library.expert_names, ["code", "math"])
            self.assertEqual(library.directories, [second, first])
            module = library.module("up_proj")
            x, ids, weights = self.normal(3, D_IN), np.zeros((3, 1), np.int32), np.ones((3, 1), np.float32)
            y = self.session.forward_assigned(module, ids, weights, x)
            assert_close(self, y, reference_forward([self.experts[1]], "model.layers.0.mlp.up_proj", x, None, ids,
                                                    weights), None, 1)

        with self.assertRaisesRegex(moerging.InvalidArgumentError, "experts 0 and 1 are both named 'same'") as caught:
            moerging.Library([first, second], names=["same", "same"])
        self.assertIn(first, str(caught.exception))
        self.assertIn(second, str(caught.exception))
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "cannot be told apart"):
            moerging.Library([first, first])

    def test_library_base_models(self):
        """Experts of different base models load with a warning on stderr, or are refused with strict."""
        paths = [self.copy_expert(0, "gpt2-tuned", base_model_name_or_path="gpt2"),
                 self.copy_expert(1, "distil-tuned", base_model_name_or_path="distilgpt2")]
        models = "different base models: gpt2 (expert 'gpt2-tuned'); distilgpt2 (expert 'distil-tuned')"
        library, written = capture_stderr(lambda: moerging.Library(paths))
        library.close()
        self.assertRegex(written, f"^moerging: warning: [^\n]*{re.escape(models)}[^\n]*\n$")
        with self.assertRaisesRegex(moerging.InvalidArgumentError, re.escape(models)):
            capture_stderr(lambda: moerging.Library(paths, strict=True))
        # The fixture's experts name no base model, so there is nothing to compare them with.
        library, written = capture_stderr(lambda: moerging.Library([self.paths[0], paths[0]], strict=np.bool_(True)))
        library.close()
        self.assertEqual(written, "")

    def test_arrow_defaults_from_arrow_config(self):
        """Router.arrow without top_k or temperature takes the experts' arrow_config values, else top-3 and 1."""
        module = "model.layers.0.mlp.up_proj"
        paths = [self.copy_expert(e, f"arrow-{e}", arrow_config={"top_k": 2, "router_temperature": 0.625})
                 for e in range(EXPERTS)]
        prototypes = arrow_prototypes(self.experts, module)
        with moerging.Library(paths) as library:
            up = library.module("up_proj")
            for options, k, temperature in (({}, 2, 0.625), ({"top_k": 3}, 3, 0.625), ({"temperature": 1.5}, 2, 1.5),
                                            ({"top_k": None, "temperature": None}, 2, 0.625)):
                with self.subTest(**options), moerging.Router.arrow(up, **options) as router:
                    self.assertEqual(router.top_k, k)
                    x = self.normal(7, D_IN)
                    y, ids, w = self.session.forward(up, router, x)
                    reference_weights = check_routing(self, np.abs(x.astype(np.float64) @ prototypes.T) / temperature,
                                                      ids, w)
                    assert_close(self, y, reference_forward(self.experts, module, x, None, ids, reference_weights),
                                 None, k)
        with moerging.Router.arrow(self.up) as router:
            self.assertEqual(router.top_k, 3)

    def test_uniform_and_fixed(self):
        weights = self.normal(EXPERTS)
        weights[2] = weights[0]  # a tie: expert 0 first
        order = sorted(range(EXPERTS), key=lambda e: (-weights[e], e))
        for router, given in ((moerging.Router.uniform(EXPERTS), np.full(EXPERTS, 1 / EXPERTS, np.float32)),
                              (moerging.Router.fixed(weights), weights)):
            with router:
                x, base = self.normal(7, D_IN), self.normal(7, D_OUT)
                y, ids, w = self.session.forward(self.up, router, x, base)
                expected = order if given is weights else list(range(EXPERTS))
                self.assertTrue(np.array_equal(ids, np.tile(expected, (7, 1))), f"ids {ids[0]}, expected {expected}")
                self.assertTrue(np.array_equal(w, np.tile(given[expected], (7, 1))))
                assert_close(self, y, reference_forward(self.experts, "model.layers.0.mlp.up_proj", x, base, ids, w),
                             base, EXPERTS)

    def test_arrow(self):
        module = "model.layers.0.mlp.up_proj"
        prototypes = arrow_prototypes(self.experts, module)
        temperature = float(self.rng.uniform(0.5, 1.5))
        with moerging.Router.arrow(self.up, top_k=2, temperature=temperature) as router:
            self.assertEqual((router.expert_count, router.top_k), (EXPERTS, 2))
            x, base = self.normal(9, D_IN), self.normal(9, D_OUT)
            y, ids, w = moerging.forward(self.up, router, x, base)
        scores = np.abs(x.astype(np.float64) @ prototypes.T) / temperature
        reference_weights = check_routing(self, scores, ids, w)
        assert_close(self, y, reference_forward(self.experts, module, x, base, ids, reference_weights), base, 2)

    def test_linear(self):
        module = "model.layers.0.mlp.gate_proj"
        for normalization in ("none", "layer_norm", "l2"):
            for score in ("identity", "absolute"):
                with self.subTest(normalization=normalization, score=score):
                    prototypes = self.normal(EXPERTS, D_IN) / np.sqrt(D_IN)
                    bias = self.normal(EXPERTS) * 0.3 if score == "identity" else None
                    top_k, temperature = int(self.rng.integers(1, EXPERTS + 1)), float(self.rng.uniform(0.3, 1.3))
                    router = moerging.Router.linear(prototypes, top_k, temperature, normalization, score, bias)
                    x = self.normal(8, D_IN)
                    y, ids, w = self.session.forward(self.gate, router, x)
                    router.close()
                    z = x.astype(np.float64)
                    if normalization == "layer_norm":
                        z = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)
                    elif normalization == "l2":
                        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
                    dots = z @ prototypes.astype(np.float64).T
                    scores = (np.abs(dots) if score == "absolute" else dots) / temperature
                    scores = scores + (0 if bias is None else bias.astype(np.float64))
                    reference_weights = check_routing(self, scores, ids, w)
                    assert_close(self, y, reference_forward(self.experts, module, x, None, ids, reference_weights),
                                 None, top_k)

    def test_file_routers(self):
        """PHATGOOSE gates and centroids shipped in the expert directories, and a saved classifier."""
        name = self.up.name
        x = self.normal(9, D_IN).astype(np.float64)
        gates, centroids = self.normal(EXPERTS, D_IN), self.normal(EXPERTS, D_IN)
        weight, bias = self.normal(EXPERTS, D_IN) / np.sqrt(D_IN), self.normal(EXPERTS) * 0.5
        classifier = os.path.join(self.root, "classifier.safetensors")
        write_safetensors(classifier, {"weight": weight, "bias": bias})
        for path, g, c in zip(self.paths, gates, centroids):
            write_safetensors(os.path.join(path, "phatgoose_gates.safetensors"), {name + ".phatgoose_gate": g})
            write_safetensors(os.path.join(path, "centroids.safetensors"), {name + ".centroid": c})

        def layer_norm(v):
            v = v.astype(np.float64)
            return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)

        c = centroids.astype(np.float64)
        cases = [  # (name, router factory, default k, float64 scores before the temperature, bias)
            ("phatgoose", lambda **o: moerging.Router.phatgoose(self.up, **o), 2,
             layer_norm(x) @ layer_norm(gates).T / np.sqrt(D_IN), 0),
            ("centroid", lambda **o: moerging.Router.centroid(self.up, **o), EXPERTS,
             x @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T / np.sqrt(D_IN), 0),
            ("classifier", lambda **o: moerging.Router.classifier(classifier, **o), EXPERTS,
             x @ weight.astype(np.float64).T, bias.astype(np.float64)),
        ]
        for what, make, default_k, dots, b in cases:
            for options in ({}, {"top_k": 2, "temperature": float(self.rng.uniform(0.5, 1.5))}):
                with self.subTest(router=what, **options), make(**options) as router:
                    self.assertEqual(router.top_k, options.get("top_k", default_k))
                    y, ids, w = self.session.forward(self.up, router, x)
                    reference_weights = check_routing(self, dots / options.get("temperature", 1.0) + b, ids, w)
                    assert_close(self, y, reference_forward(self.experts, "model.layers.0.mlp.up_proj", x, None, ids,
                                                            reference_weights), None, router.top_k)
        for path in self.paths:
            os.remove(os.path.join(path, "phatgoose_gates.safetensors"))
        with self.assertRaisesRegex(moerging.NotFoundError, "has no PHATGOOSE gate file"):
            moerging.Router.phatgoose(self.up)
        with self.assertRaisesRegex(moerging.FormatError, "has no centroid for module"):
            moerging.Router.centroid(self.gate)
        for path in self.paths:
            os.remove(os.path.join(path, "centroids.safetensors"))
        with self.assertRaisesRegex(moerging.NotFoundError, "no-such.safetensors"):
            moerging.Router.classifier(os.path.join(self.root, "no-such.safetensors"))
        os.remove(classifier)

    def test_assigned(self):
        tokens, k = 11, 3
        ids = self.rng.integers(-1, EXPERTS, (tokens, k)).astype(np.int32)
        weights = self.normal(tokens, k)
        x, base = self.normal(tokens, D_IN), self.normal(tokens, D_OUT)
        y = moerging.forward_assigned(self.up, ids, weights, x, base, session=self.session)
        assert_close(self, y, reference_forward(self.experts, "model.layers.0.mlp.up_proj", x, base, ids, weights),
                     base, k)
        # Any integer dtype whose values fit int32 is taken as is, -1 still an empty slot.
        for dtype in (np.int8, np.int16, np.int64, np.uint64):
            given = ids if np.issubdtype(dtype, np.signedinteger) else np.maximum(ids, 0)
            expected = self.session.forward_assigned(self.up, given.astype(np.int32), weights, x, base)
            with self.subTest(dtype=dtype.__name__):
                self.assertTrue(np.array_equal(self.session.forward_assigned(self.up, given.astype(dtype), weights, x,
                                                                             base), expected))
        self.assertTrue(np.array_equal(self.session.forward_assigned(self.up, ids.tolist(), weights.tolist(), x, base),
                                       y))

    def test_weight_precision(self):
        """weight_precision on the engine and the library: forwards against the float64 reference of the factors as
        stored (rounded to nearest even here: numpy's float16, and bfloat16 on the float32 bits), with prototypes the
        format represents, so routing is exact; the float32 library converted by the engine gives the same bits; the
        float32 engine reads the 16-bit library as it holds it; bad values are refused."""
        def bfloat16(v):
            bits = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32).astype(np.uint64)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.astype(np.uint32).view(np.float32)

        rounding = {"bf16": bfloat16, "f16": lambda v: np.asarray(v, dtype=np.float32).astype(np.float16).astype(np.float32)}
        module = "model.layers.0.mlp.up_proj"
        for precision, rounded in rounding.items():
            with self.subTest(precision=precision), moerging.Engine("cpu", cpu_threads=2, weight_precision=precision) as engine, \
                    engine.session() as session, moerging.Library(self.paths, weight_precision=precision) as held:
                stored = [{"factors": {m: (rounded(a), rounded(b), s) for m, (a, b, s) in e["factors"].items()}}
                          for e in self.experts]
                tokens, k = 9, 2
                ids = self.rng.integers(-1, EXPERTS, (tokens, k)).astype(np.int32)
                weights = self.normal(tokens, k)
                x, base = self.normal(tokens, D_IN), self.normal(tokens, D_OUT)
                up = held.module("up_proj")
                y = session.forward_assigned(up, ids, weights, x, base)
                assert_close(self, y, reference_forward(stored, module, x, base, ids, weights), base, k)
                self.assertTrue(np.array_equal(session.forward_assigned(self.up, ids, weights, x, base), y),
                                "the float32 library converted by the engine gives other bits")
                assert_close(self, self.session.forward_assigned(up, ids, weights, x, base),
                             reference_forward(stored, module, x, base, ids, weights), base, k)

                prototypes = rounded(self.normal(EXPERTS, D_IN) / np.sqrt(D_IN))
                with moerging.Router.linear(prototypes, k, 1.0, "none", "absolute") as router:
                    y, routed, w = session.forward(up, router, x, base)
                reference_weights = check_routing(self, np.abs(x.astype(np.float64) @ prototypes.astype(np.float64).T), routed, w)
                assert_close(self, y, reference_forward(stored, module, x, base, routed, reference_weights), base, k)
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "weight_precision must be one of f32, f16, bf16, got 'f8'"):
            moerging.Engine("cpu", weight_precision="f8")
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "weight_precision must be one of f32, f16, bf16, got 'fp16'"):
            moerging.Library(self.paths, weight_precision="fp16")
        # The GPU kernels store BF16 too; the NativeAOT build has no GPU backend at all.
        if CPU_ONLY:
            with self.assertRaisesRegex(moerging.BackendUnavailableError, "CPU-only"):
                moerging.Engine("gpu-simulator", weight_precision="bf16")
        else:
            moerging.Engine("gpu-simulator", weight_precision="bf16").close()

    def test_forward_into_given_arrays(self):
        """out=, expert_ids_out= and expert_weights_out= receive bit for bit what the allocating call returns, and
        are the arrays returned; out may be base itself, for y += mixture in place."""
        module = "model.layers.0.mlp.up_proj"
        scores = lambda x: np.abs(x.astype(np.float64) @ arrow_prototypes(self.experts, module).T)  # noqa: E731
        tokens = 6
        with moerging.Router.arrow(self.up, top_k=2, temperature=1.0) as router:
            x, base = self.normal(tokens, D_IN), self.normal(tokens, D_OUT)
            for given_base in (None, base):
                with self.subTest(base=given_base is not None):
                    expected = self.session.forward(self.up, router, x, given_base)
                    # What the arrays held is overwritten (base None: zeroed first, as a new y is).
                    y, ids = np.full((tokens, D_OUT), np.nan, np.float32), np.full((tokens, 2), 99, np.int32)
                    weights = np.full((tokens, 2), np.nan, np.float32)
                    got = self.session.forward(self.up, router, x, given_base, out=y, expert_ids_out=ids,
                                               expert_weights_out=weights)
                    for returned, given, allocated in zip(got, (y, ids, weights), expected):
                        self.assertIs(returned, given)
                        self.assertEqual(returned.tobytes(), allocated.tobytes())
                    reference_weights = check_routing(self, scores(x), ids, weights)
                    assert_close(self, y, reference_forward(self.experts, module, x, given_base, ids,
                                                            reference_weights), given_base, 2)
                    # Any one of them alone; the others are new arrays, equal too.
                    for i, name in enumerate(("out", "expert_ids_out", "expert_weights_out")):
                        given = np.empty_like(expected[i])
                        got = moerging.forward(self.up, router, x, given_base, session=self.session, **{name: given})
                        self.assertIs(got[i], given)
                        self.assertEqual([g.tobytes() for g in got], [e.tobytes() for e in expected], name)

            # In place: base is out. Twice adds the mixture twice.
            expected = self.session.forward(self.up, router, x, base)
            y = base.copy()
            got = self.session.forward(self.up, router, x, y, out=y)
            self.assertIs(got[0], y)
            self.assertEqual(y.tobytes(), expected[0].tobytes())
            moerging.forward(self.up, router, x, y, out=y, session=self.session)
            update = reference_forward(self.experts, module, x, None, expected[1], expected[2])
            assert_close(self, y, base.astype(np.float64) + 2 * update, base, 4)

        ids = self.rng.integers(-1, EXPERTS, (tokens, 3)).astype(np.int32)
        weights = self.normal(tokens, 3)
        for given_base in (None, base):
            expected = moerging.forward_assigned(self.up, ids, weights, x, given_base, session=self.session)
            y = np.full((tokens, D_OUT), np.nan, np.float32)
            self.assertIs(self.session.forward_assigned(self.up, ids, weights, x, given_base, out=y), y)
            self.assertEqual(y.tobytes(), expected.tobytes())
            assert_close(self, y, reference_forward(self.experts, module, x, given_base, ids, weights), given_base, 3)
        y = base.copy()
        self.assertIs(moerging.forward_assigned(self.up, ids, weights, x, y, session=self.session, out=y), y)
        self.assertEqual(y.tobytes(), expected.tobytes())

    def test_given_arrays_are_checked(self):
        """An out= array the result cannot go into as it is raises InvalidArgumentError (a ValueError) naming it,
        and the call writes nothing."""
        tokens = 3
        x, base = self.normal(tokens, D_IN), self.normal(tokens, D_OUT)
        unaligned = np.frombuffer(bytearray(tokens * D_OUT * 4 + 1), np.float32, tokens * D_OUT, 1).reshape(tokens,
                                                                                                             D_OUT)
        read_only = np.zeros((tokens, D_OUT), np.float32)
        read_only.setflags(write=False)
        decision = np.zeros(2 * tokens * 2, np.float32)
        shape = f"\\({tokens}, {D_OUT}\\)"
        out_cases = [
            ([[0.0] * D_OUT] * tokens, "^out must be a numpy array, got list$"),
            (np.zeros((tokens, D_OUT)), "^out must have dtype float32, got float64$"),
            (np.zeros((tokens, D_OUT), ">f4"), "^out must have dtype float32, got >f4$"),
            (np.zeros((tokens, D_OUT + 1), np.float32), f"^out must have shape {shape}, got \\({tokens}, 11\\)$"),
            (np.zeros(tokens * D_OUT, np.float32), f"^out must have shape {shape}, got \\({tokens * D_OUT},\\)$"),
            (np.zeros((tokens, 2 * D_OUT), np.float32)[:, ::2], "^out must be C-contiguous$"),
            (np.zeros((tokens, D_OUT), np.float32, order="F"), "^out must be C-contiguous$"),
            (read_only, "^out is read-only$"),
            (unaligned, "^out is not aligned to its 4-byte elements$"),
        ]
        with moerging.Router.arrow(self.up, top_k=2) as router:
            for out, pattern in out_cases:
                for call in (lambda: self.session.forward(self.up, router, x, out=out),
                             lambda: moerging.forward(self.up, router, x, base, session=self.session, out=out),
                             lambda: moerging.forward_assigned(self.up, [[0]] * tokens, [[1]] * tokens, x,
                                                               session=self.session, out=out)):
                    with self.subTest(pattern=pattern), self.assertRaisesRegex(moerging.InvalidArgumentError, pattern):
                        call()

            y = np.full((tokens, D_OUT), 7, np.float32)
            slots = [
                ({"expert_ids_out": np.zeros((tokens, 2), np.int64)}, "^expert_ids_out must have dtype int32, got int64$"),
                ({"expert_ids_out": np.zeros((tokens, 3), np.int32)},
                 f"^expert_ids_out must have shape \\({tokens}, 2\\), got \\({tokens}, 3\\)$"),
                ({"expert_weights_out": np.zeros((tokens, 2), np.float64)},
                 "^expert_weights_out must have dtype float32, got float64$"),
                ({"expert_weights_out": np.zeros((2, tokens), np.float32).T}, "^expert_weights_out must be C-contiguous$"),
                ({"expert_weights_out": y.ravel()[:2 * tokens].reshape(tokens, 2)},
                 "^expert_weights_out overlaps out; it must be a separate array$"),
                ({"expert_ids_out": y.ravel()[-2 * tokens:].view(np.int32).reshape(tokens, 2)},
                 "^expert_ids_out overlaps out"),
                ({"expert_weights_out": x.ravel()[3:3 + 2 * tokens].reshape(tokens, 2)}, "^expert_weights_out overlaps x"),
                ({"expert_ids_out": base.ravel()[:2 * tokens].view(np.int32).reshape(tokens, 2)},
                 "^expert_ids_out overlaps base"),
                ({"expert_ids_out": decision[:2 * tokens].view(np.int32).reshape(tokens, 2),
                  "expert_weights_out": decision[tokens:3 * tokens].reshape(tokens, 2)},
                 "^expert_ids_out overlaps expert_weights_out"),
            ]
            x_before, base_before = x.copy(), base.copy()
            for given, pattern in slots:
                # With base None too, where out would be zeroed: the checks come first.
                for given_base in (base, None) if "overlaps base" not in pattern else (base,):
                    with self.subTest(pattern=pattern, base=given_base is not None), \
                            self.assertRaisesRegex(moerging.InvalidArgumentError, pattern):
                        self.session.forward(self.up, router, x, given_base, out=y, **given)
            self.assertTrue(np.all(y == 7), "a refused call wrote into out")
            self.assertEqual((x.tobytes(), base.tobytes()), (x_before.tobytes(), base_before.tobytes()))

            # out sharing memory with x, or with base without being base itself, is refused before out is touched
            # (with base None it would be zeroed first): x and base keep their values, whichever call it is.
            both = self.normal(tokens, D_IN + D_OUT).ravel()
            before = both.copy()
            shared_x = both[:tokens * D_IN].reshape(tokens, D_IN)
            over_x = both[tokens * D_IN - 2:-2].reshape(tokens, D_OUT)
            for call in (lambda: self.session.forward(self.up, router, shared_x, out=over_x),
                         lambda: self.session.forward_assigned(self.up, [[0]] * tokens, [[1]] * tokens, shared_x,
                                                               out=over_x)):
                with self.assertRaisesRegex(moerging.InvalidArgumentError, "^out overlaps x; it must be a separate array$"):
                    call()
            shared_base = both[:tokens * D_OUT].reshape(tokens, D_OUT)
            over_base = both[1:tokens * D_OUT + 1].reshape(tokens, D_OUT)
            for call in (lambda: self.session.forward(self.up, router, x, shared_base, out=over_base),
                         lambda: self.session.forward_assigned(self.up, [[0]] * tokens, [[1]] * tokens, x, shared_base,
                                                               out=over_base)):
                with self.assertRaisesRegex(moerging.InvalidArgumentError, "^out overlaps base; it must be a separate array$"):
                    call()
            self.assertEqual(both.tobytes(), before.tobytes(), "a refused call changed x or base")

    def test_forward_makes_one_call(self):
        """A forward asks the library nothing but the forward itself: the router's E and k are read at creation
        (routers are immutable)."""
        class Recording:
            def __init__(self, library):
                self.library, self.calls = library, []

            def __getattr__(self, name):
                self.calls.append(name)
                return getattr(self.library, name)

        x = self.normal(2, D_IN)
        with moerging.Router.arrow(self.up, top_k=2) as router:
            recording = Recording(moerging.lib)
            with unittest.mock.patch.object(moerging, "lib", recording):
                self.session.forward(self.up, router, x)
                self.session.forward(self.up, router, x, out=np.empty((2, D_OUT), np.float32))
                self.session.forward_assigned(self.up, [[0], [1]], [[1], [1]], x)
                self.assertEqual((router.top_k, router.expert_count), (2, EXPERTS))
            self.assertEqual(recording.calls, ["moe_forward", "moe_forward", "moe_forward_assigned"])
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "this Router is closed"):
            router.expert_count
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "this Router is closed"):
            self.session.forward(self.up, router, x)

    def test_version(self):
        """__version__ is Directory.Build.props's (read from the source tree here); native_version() is the library's
        moe_version(), or None for a library older than that function."""
        self.assertEqual(moerging.__version__, test_wheel.props_version())
        try:
            moerging.lib.moe_version
        except AttributeError:
            self.assertIsNone(moerging.native_version())
        else:  # a build suffix (+commit) may follow the version
            self.assertEqual(moerging.native_version().split("+")[0], moerging.__version__)

    def test_the_expected_copy_is_loaded(self):
        """From a wheel: the installed package and the library it bundles, and no .NET runtime in the process.
        From the source tree: the package there and $MOERGING_LIBRARY."""
        package = os.path.dirname(os.path.abspath(moerging.__file__))
        with open("/proc/self/maps") as maps:
            mapped = {line.split()[-1] for line in maps if "/" in line}
        library = os.path.realpath(moerging._native.library_path())
        self.assertIn(library, mapped)
        if WHEEL:
            self.assertIn(os.sep + "site-packages" + os.sep, package)
            self.assertFalse(os.path.realpath(package).startswith(SOURCE_TREE + os.sep))
            self.assertNotIn("MOERGING_LIBRARY", os.environ)
            self.assertEqual(library, os.path.realpath(moerging._native.BUNDLED))
            self.assertIn(os.path.join(package, "_lib", "MoErging.Interop.so"), mapped)
            self.assertEqual([m for m in mapped if "coreclr" in m or "hostfxr" in m], [])
        else:
            self.assertEqual(package, os.path.join(SOURCE_TREE, "moerging"))
            self.assertEqual(library, os.path.realpath(os.environ["MOERGING_LIBRARY"]))

    def test_library_path(self):
        """$MOERGING_LIBRARY first, then the library a wheel bundles, else an error that names both ways."""
        bundled = os.path.join(self.root, "_lib", "libmoerging.so.2")
        os.makedirs(os.path.dirname(bundled))
        with open(bundled, "wb"):
            pass
        self.addCleanup(shutil.rmtree, os.path.dirname(bundled))
        library_path = moerging._native.library_path
        self.assertEqual(library_path({"MOERGING_LIBRARY": "/opt/libmoerging.so"}, bundled), "/opt/libmoerging.so")
        self.assertEqual(library_path({}, bundled), bundled)
        self.assertEqual(library_path({"MOERGING_LIBRARY": ""}, bundled), bundled)
        missing = os.path.join(self.root, "nowhere", "libmoerging.so.2")
        with self.assertRaises(ImportError) as caught:
            library_path({"PATH": "/bin"}, missing)
        for part in ("MOERGING_LIBRARY is not set", missing, "pip install artifacts/python/moerging-*.whl",
                     "artifacts/native/libmoerging.so"):
            self.assertIn(part, str(caught.exception))

        # The import itself, in the source tree (which bundles no library).
        environment = {k: v for k, v in os.environ.items() if k != "MOERGING_LIBRARY"}
        environment["PYTHONPATH"] = SOURCE_TREE
        for name, value, expected in (("MOERGING_LIBRARY", None, "ImportError: the moerging package has no libmoerging "
                                                                 "to load: MOERGING_LIBRARY is not set"),
                                      ("MOERGING_LIBRARY", missing, f"ImportError: {re.escape(missing)} "
                                                                    f"\\(MOERGING_LIBRARY\\) could not be loaded: ")):
            if value is not None:
                environment[name] = value
            done = subprocess.run([sys.executable, "-c", "import moerging"], env=environment, capture_output=True,
                                  text=True)
            self.assertNotEqual(done.returncode, 0)
            self.assertRegex(done.stderr, expected)

    def test_bad_values_are_refused_before_any_call(self):
        """Values ctypes or numpy would cast to others (wrapped, truncated, parsed) raise TypeError or
        InvalidArgumentError (a ValueError) naming the argument, and the index of the first bad element."""
        x, weights = self.normal(1, D_IN), self.normal(1, 2)
        classifier = os.path.join(self.root, "never-read.safetensors")
        uniform = moerging.Router.uniform(EXPERTS)
        int32 = "outside the int32_t range \\[-2147483648, 2147483647\\]"
        cases = [  # (call, exception, message pattern)
            (lambda: moerging.Engine("cpu", cpu_threads=2**40), moerging.InvalidArgumentError,
             f"^cpu_threads is 1099511627776, {int32}$"),
            (lambda: moerging.Engine("cpu", cpu_threads=1.9), TypeError,
             "^cpu_threads must be an integer, got float 1.9$"),
            (lambda: moerging.Engine("cpu", cpu_threads=True), TypeError,
             "^cpu_threads must be an integer, got bool True$"),
            (lambda: moerging.Router.arrow(self.up, temperature=True), TypeError,
             "^temperature must be a real number, got bool True$"),
            (lambda: moerging.Router.phatgoose(self.up, temperature="2"), TypeError,
             "^temperature must be a real number, got str '2'$"),
            (lambda: moerging.Library(self.root), TypeError, "^directories must be a list of paths, got the single path"),
            (lambda: moerging.Library([self.root, 3]), TypeError, "^directories\\[1\\] must be a path, got int 3$"),
            (lambda: moerging.Library([self.root + "\0x"]), moerging.InvalidArgumentError, "holds a NUL character$"),
            (lambda: moerging.forward_assigned(self.up, [[0, 2**32 + 1]], weights, x, session=self.session),
             moerging.InvalidArgumentError, f"^expert_ids\\[0, 1\\] is 4294967297, {int32}$"),
            (lambda: moerging.forward_assigned(self.up, np.array([[1, 0xFFFFFFFF]], np.uint32), weights, x,
                                               session=self.session),
             moerging.InvalidArgumentError, f"^expert_ids\\[0, 1\\] is 4294967295, {int32}$"),
            (lambda: moerging.forward_assigned(self.up, np.array([[-2**31 - 1, 0]]), weights, x, session=self.session),
             moerging.InvalidArgumentError, f"^expert_ids\\[0, 0\\] is -2147483649, {int32}$"),
            (lambda: moerging.forward_assigned(self.up, [[0, 1.9]], weights, x, session=self.session), TypeError,
             "^expert_ids must hold integers, got an array of float64$"),
            (lambda: moerging.forward_assigned(self.up, np.zeros((1, 2), np.float32), weights, x, session=self.session),
             TypeError, "^expert_ids must hold integers, got an array of float32$"),
            (lambda: moerging.forward_assigned(self.up, [[True, False]], weights, x, session=self.session), TypeError,
             "^expert_ids must hold integers, got an array of bool$"),
            (lambda: moerging.forward_assigned(self.up, [[0, 1]], [["0.5", "1"]], x, session=self.session), TypeError,
             "^expert_weights must hold real numbers, got an array of <U3$"),
            (lambda: self.session.forward(self.up, uniform, [[1j] * D_IN]), TypeError,
             "^x must hold real numbers, got an array of complex128$"),
            (lambda: moerging.Router.fixed([True] * EXPERTS), TypeError,
             "^weights must hold real numbers, got an array of bool$"),
            (lambda: moerging.Router.uniform(-1), moerging.InvalidArgumentError,
             f"^expert_count is -1, outside the size_t range \\[0, {2**64 - 1}\\]$"),
            (lambda: moerging.Router.uniform(float(EXPERTS)), TypeError,
             "^expert_count must be an integer, got float 4.0$"),
            (lambda: moerging.Router.arrow(self.up, top_k=2**32 + 1), moerging.InvalidArgumentError,
             f"^top_k is 4294967297, {int32}$"),
            (lambda: moerging.Router.arrow(self.up, top_k=np.bool_(True)), TypeError,
             "^top_k must be an integer, got bool_"),
            (lambda: moerging.Router.linear(self.normal(EXPERTS, D_IN), top_k=1.9), TypeError,
             "^top_k must be an integer, got float 1.9$"),
            (lambda: moerging.Router.linear(self.normal(EXPERTS, D_IN), bias=["a"] * EXPERTS), TypeError,
             "^bias must hold real numbers, got an array of <U1$"),
            (lambda: moerging.Router.phatgoose(self.up, top_k=0xFFFFFFFF), moerging.InvalidArgumentError,
             f"^top_k is 4294967295, {int32}$"),
            (lambda: moerging.Router.classifier(classifier, top_k=np.float64(2)), TypeError,
             "^top_k must be an integer, got float64 2.0$"),
            (lambda: moerging.Library(self.paths, names="math"), TypeError,
             "^names must be a list of names, got str 'math'$"),
            (lambda: moerging.Library(self.paths, names=3), TypeError, "^names must be a list of names, got int 3$"),
            (lambda: moerging.Library(self.paths, names=[None, 7, None, None]), TypeError,
             "^names\\[1\\] must be a string or None, got int 7$"),
            (lambda: moerging.Library(self.paths, names=["math"]), moerging.InvalidArgumentError,
             f"^1 names were given for {EXPERTS} directories"),
            (lambda: moerging.Library(self.paths, names=["a\0b", None, None, None]), moerging.InvalidArgumentError,
             "^names\\[0\\] is 'a\\\\x00b', which holds a NUL character$"),
            (lambda: moerging.Library({"math": self.paths[0]}, names=["code"]), TypeError,
             "^names cannot be given with a dict of directories"),
            (lambda: moerging.Library(self.paths, strict=1), TypeError, "^strict must be a bool, got int 1$"),
            (lambda: moerging.Library(self.paths, strict="no"), TypeError, "^strict must be a bool, got str 'no'$"),
        ]

        class NoCalls:
            def __getattr__(self, name):
                def call(*arguments):
                    raise AssertionError(f"{name} was called with a bad value")
                return call

        with unittest.mock.patch.object(moerging, "lib", NoCalls()):
            for i, (call, error, pattern) in enumerate(cases):
                with self.subTest(case=i, expected=pattern), self.assertRaisesRegex(error, pattern):
                    call()
        uniform.close()
        # numpy integer scalars are integers; the library then checks what the value means.
        with moerging.Router.arrow(self.up, top_k=np.int64(2)) as router:
            self.assertEqual(router.top_k, 2)
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "top-k must be in \\[1, 4\\]"):
            moerging.Router.arrow(self.up, top_k=-1)
        # cpu_threads fits int32 but exceeds the engine's bound: 4 x the processors .NET counts, at most these.
        bound_pattern = "^CpuThreads is {}; it must be 0 \\(every processor\\) to (\\d+) "
        with self.assertRaisesRegex(moerging.InvalidArgumentError, bound_pattern.format(20000)) as caught:
            moerging.Engine("cpu", cpu_threads=20000)
        bound = int(re.match(bound_pattern.format(20000), str(caught.exception)).group(1))
        self.assertTrue(0 < bound <= 4 * len(os.sched_getaffinity(0)) and bound % 4 == 0, f"the bound is {bound}")
        moerging.Engine("cpu", cpu_threads=bound).close()
        with self.assertRaisesRegex(moerging.InvalidArgumentError, bound_pattern.format(bound + 1)):
            moerging.Engine("cpu", cpu_threads=bound + 1)

    def test_non_finite_values_pass_through(self):
        """NaN and Inf in x, base and weights reach the library unchanged: it decides what they mean."""
        ids, weights = np.array([[0, 1], [2, -1], [3, 1]]), self.normal(3, 2)
        x, base = self.normal(3, D_IN), self.normal(3, D_OUT)
        x[0, 3], base[1, 2], base[2, 0] = np.nan, np.inf, -np.inf
        y = moerging.forward_assigned(self.up, ids, weights, x, base, session=self.session)
        reference = reference_forward(self.experts, "model.layers.0.mlp.up_proj", x, base, ids, weights)
        for what, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
            self.assertTrue(np.array_equal(test(y), test(reference)), f"{what} at {np.argwhere(test(y))}, expected at "
                                                                      f"{np.argwhere(test(reference))}")
        finite = np.isfinite(reference)
        assert_close(self, y[finite], reference[finite], base[finite], 2)
        # The library's own checks see the Inf and NaN weights.
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "^weight at token 0, slot 1 must be finite"):
            moerging.forward_assigned(self.up, ids, [[1, np.inf], [1, 0], [1, 1]], x, session=self.session)
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "^weight of expert 2 must be finite"):
            moerging.Router.fixed([1, 1, np.nan, 1])

    def test_threads(self):
        """Eight threads, each with its own session over the shared library and router, match one thread."""
        router = moerging.Router.arrow(self.up, top_k=2)
        inputs = [self.normal(5, D_IN) for _ in range(8)]
        expected = [self.session.forward(self.up, router, x) for x in inputs]
        mismatches, failures = [0] * 8, []
        barrier = threading.Barrier(8)

        def work(i):
            try:
                with self.engine.session() as own:
                    barrier.wait()
                    for _ in range(20):
                        got = own.forward(self.up, router, inputs[i])
                        mismatches[i] += not all(np.array_equal(g, e) for g, e in zip(got, expected[i]))
            except Exception as error:  # reported below; a thread cannot fail the test itself
                failures.append(f"thread {i}: {error!r}")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        router.close()
        self.assertEqual(failures, [])
        self.assertEqual(mismatches, [0] * 8, "forwards that differ from the single-thread result, per thread")

    def test_errors(self):
        missing = os.path.join(self.root, "no-such-expert")
        with self.assertRaisesRegex(moerging.NotFoundError, "no such directory") as caught:
            moerging.Library([self.paths[0], missing])
        self.assertEqual(caught.exception.status, 2)
        self.assertIn(missing, str(caught.exception))
        with self.assertRaisesRegex(moerging.NotFoundError, "no module matches 'down_proj'"):
            self.library.module("down_proj")
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "top-k must be in \\[1, 4\\]"):
            moerging.Router.arrow(self.up, top_k=5)
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "x must be a 2-D array with 12 columns"):
            moerging.forward(self.up, moerging.Router.uniform(EXPERTS), self.normal(3, 5))
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "chooses among 3 experts"):
            self.session.forward(self.up, moerging.Router.uniform(3), self.normal(2, D_IN))
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "expert id at token 0, slot 1"):
            self.session.forward_assigned(self.up, [[0, EXPERTS]], [[1, 1]], self.normal(1, D_IN))
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "normalization must be one of"):
            moerging.Router.linear(self.normal(EXPERTS, D_IN), normalization="batch")

        router = moerging.Router.uniform(EXPERTS)
        handle = router.handle
        router.close()
        router.close()  # closing twice is a no-op in Python
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "closed"):
            router.top_k
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "router is not a live handle"):
            moerging.check(moerging.lib.moe_router_free(handle))  # the library itself rejects a double free

        other = moerging.Library(self.paths)
        module = other.module("up_proj")
        other.close()
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "module is not a live handle"):
            self.session.forward(module, moerging.Router.uniform(EXPERTS), self.normal(1, D_IN))

        engine = moerging.Engine("cpu", cpu_threads=1)
        session = engine.session()
        with self.assertRaisesRegex(moerging.InvalidArgumentError, "1 live session"):
            engine.close()
        session.close()
        engine.close()
        names = {"cuda": "Cuda", "opencl": "OpenCL", "gpu-simulator": "GpuSimulator"}
        if CPU_ONLY:
            for backend in names:
                with self.assertRaises(moerging.BackendUnavailableError) as refused:
                    moerging.Engine(backend)
                for fragment in (names[backend], "CPU-only", "--target=Native"):
                    self.assertIn(fragment, str(refused.exception))
            automatic = moerging.Engine("auto", cpu_threads=1)
            self.assertEqual(automatic.backend, "cpu")
            self.assertIn("CPU-only", automatic.backend_reason)
            automatic.close()
        else:
            for backend in ("cuda", "opencl"):
                try:
                    moerging.Engine(backend).close()
                except moerging.BackendUnavailableError as error:
                    self.assertIn(names[backend], str(error))

        broken = os.path.join(self.root, "broken")
        write_adapter(broken, 2, 4.0, False, {"model.layers.0.mlp.up_proj": (self.normal(3, D_IN), self.normal(D_OUT, 3))})
        with self.assertRaisesRegex(moerging.FormatError, "do not have the rank 2"):
            moerging.Library([broken])
        with open(os.path.join(broken, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "r": 3, "lora_alpha": 4, "use_dora": True, "target_modules": ["up_proj"]}, f)
        with self.assertRaisesRegex(moerging.NotSupportedError, "DoRA"):
            moerging.Library([broken])
        shutil.rmtree(broken)


class RecordingResult(unittest.TextTestResult):
    """Also remembers which tests passed, so tests that never ran (a failed setUpClass) count as failed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = set()

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed.add(test.id())


def main():
    junit = sys.argv[sys.argv.index("--junit") + 1] if "--junit" in sys.argv else None
    print(f"seed {SEED} (set MOERGING_TEST_SEED to repeat)")
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(EngineTests)
    suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(test_wheel.WheelTests))  # the wheel builder
    ids = [test.id() for test in suite]
    result = unittest.TextTestRunner(verbosity=2, resultclass=RecordingResult).run(suite)
    traces = {}
    for test, trace in result.failures + result.errors:
        key = getattr(test, "test_case", test).id()  # a failed subTest reports under its test
        traces[key] = traces.get(key, "") + trace
    setup_trace = "".join(t for k, t in traces.items() if k not in ids)  # setUpClass and the like
    failed = [i for i in ids if i not in result.passed]
    if junit:
        with open(junit, "w") as f:
            f.write('<?xml version="1.0" encoding="UTF-8"?>\n')
            f.write(f'<testsuite name="python" tests="{len(ids)}" failures="{len(failed)}" errors="0" skipped="0">\n')
            for i in ids:
                f.write(f'  <testcase classname="python" name="{i.rsplit(".", 1)[1]}"')
                if i in failed:
                    message = traces.get(i, setup_trace) or "did not run"
                    f.write(f"><failure message={xml.sax.saxutils.quoteattr(message)}/></testcase>\n")
                else:
                    f.write("/>\n")
            f.write("</testsuite>\n")
    print(f"{len(ids) - len(failed)} passed, {len(failed)} failed (seed {SEED})")
    return 0 if not failed and result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
