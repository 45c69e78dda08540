"""One driver per framework: the adapters of PyTorch, Keras on any backend, Flax and bnref's from-scratch layers.

Every check of ``bnref.check`` drives a framework through these adapters (the contract is
``bnref.check.contract.Adapter``): the conformance tool checks them, the agreement tables (``bnref.check.agreement``)
and the precision sweep (``bnref.check.precision``) run them. What a check needs beyond the defaults is a
constructor argument: ``implementation="native"`` or ``"bnref"`` (the framework's layer or bnref's from-scratch one),
any ``layout`` (PyTorch gets its channels moved to dim 1, as a PyTorch user would), ``device`` (PyTorch), and the
layer's own keyword arguments (``eps``/``momentum`` for PyTorch, ``epsilon``/``momentum`` for Keras, ``momentum``
for Flax). Each adapter has ``train_step(x, dy) -> (y, dx, dgamma, dbeta)``, one training step and its gradients
from one forward pass, which the agreement tables use.

Each adapter imports its framework when it is created or described, so importing this module needs NumPy only.
``make(name)`` builds the adapter for a name of ``bnref.check.conformance.NAMES``:

=================  ==============================================================================
name               implementation
=================  ==============================================================================
torch              ``torch.nn.BatchNorm2d`` (NCHW; ``TorchAdapter(layout="NC")`` gives BatchNorm1d)
keras-tensorflow   ``keras.layers.BatchNormalization`` with ``KERAS_BACKEND=tensorflow`` (NHWC)
keras-jax          the same layer on the JAX backend
keras-torch        the same layer on the torch backend
flax               ``flax.linen.BatchNorm`` with its default ``use_fast_variance=True`` (NHWC)
flax-exact         ``flax.linen.BatchNorm(use_fast_variance=False)``
bnref-torch        ``bnref.layers.torch_bn.BatchNorm2d`` (from scratch, derived backward)
bnref-keras        ``bnref.layers.keras_bn.BatchNormalization`` (from scratch, TensorFlow backend)
bnref-jax          ``bnref.layers.jax_bn`` (from scratch in JAX), once it is installed
=================  ==============================================================================

A Keras adapter runs under whichever backend Keras was imported with; ``bnref.check.conformance.run`` starts a
subprocess with ``KERAS_BACKEND`` set when this process has another one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnref.check.contract import Adapter, NotApplicable
from bnref.conventions import FLAX, FLAX_TWO_PASS, KERAS, PYTORCH

__all__ = ["TorchAdapter", "KerasAdapter", "FlaxAdapter", "JaxBnAdapter", "make"]


def _check_layout(layout: object) -> str:
    if not (isinstance(layout, str) and layout[:1] == "N" and layout.count("N") == 1 and layout.count("C") == 1):
        raise ValueError(f"layout must start with N and contain one C, e.g. 'NC', 'NCHW', 'NHWC'; got {layout!r}")
    return layout


class TorchAdapter(Adapter):
    """``torch.nn.BatchNorm1d/2d/3d`` (``implementation="native"``) or ``bnref.layers.torch_bn``'s (``"bnref"``).

    ``layout`` is the input's; channels not on dim 1 are moved there (``movedim``) and back, as a PyTorch user would.
    The native layers take 2-D to 5-D inputs (``NotApplicable`` otherwise); the from-scratch ``BatchNorm`` any rank.
    ``device`` is torch's ("cpu", "cuda", "cuda:1", ...); ``layer_kwargs`` go to the layer (``eps``, ``momentum``,
    ``momentum=None`` for the cumulative average). Parameters and running statistics are float32 for half-precision
    inputs, the input dtype otherwise.
    """

    def __init__(
        self, implementation: str = "native", layout: str = "NCHW", device: str = "cpu", **layer_kwargs: Any
    ) -> None:
        if implementation not in ("native", "bnref"):
            raise ValueError(f"implementation must be 'native' or 'bnref', got {implementation!r}")
        self.implementation, self.layout, self.layer_kwargs = implementation, _check_layout(layout), layer_kwargs
        self.device, self.axis = device, layout.index("C")
        self.name = "torch" if implementation == "native" else "bnref-torch"
        self.convention = PYTORCH.replace(**{k: v for k, v in layer_kwargs.items() if k in ("eps", "momentum")})

    def _class(self) -> Any:
        import torch

        from bnref.layers import torch_bn

        suffix = {2: "1d", 3: "1d", 4: "2d", 5: "3d"}.get(len(self.layout))
        if suffix is None:
            if self.implementation == "native":
                raise NotApplicable(f"torch.nn.BatchNorm* takes 2D-5D input, not {len(self.layout)}D")
            return torch_bn.BatchNorm
        module = torch.nn if self.implementation == "native" else torch_bn
        return getattr(module, f"BatchNorm{suffix}")

    def describe(self) -> str:
        import torch

        cls = self._class()
        where = "native" if self.implementation == "native" else "from scratch"
        device = "CPU" if self.device == "cpu" else self.device
        return f"torch {torch.__version__}: {cls.__module__}.{cls.__name__} ({where}), layout {self.layout}, {device}"

    def create(self, num_features: int, dtype: str) -> None:
        import torch

        self.torch = torch
        self.dtype = getattr(torch, dtype)
        pdtype = torch.float64 if dtype == "float64" else torch.float32  # parameters float32 for half inputs
        self.bn = self._class()(num_features, device=self.device, dtype=pdtype, **self.layer_kwargs)

    def _t(self, a: np.ndarray) -> Any:
        # the values are representable in the dtype, so this conversion is exact
        return self.torch.as_tensor(a).to(device=self.device, dtype=self.dtype).movedim(self.axis, 1)

    def _back(self, t: Any) -> Any:
        return t.movedim(1, self.axis)

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        with self.torch.no_grad():
            self.bn.weight.copy_(self.torch.as_tensor(gamma))
            self.bn.bias.copy_(self.torch.as_tensor(beta))

    def train_forward(self, x: np.ndarray) -> Any:
        with self.torch.no_grad():
            return self._back(self.bn.train()(self._t(x)))

    def infer_forward(self, x: np.ndarray) -> Any:
        with self.torch.no_grad():
            return self._back(self.bn.eval()(self._t(x)))

    def running_stats(self) -> tuple[Any, Any]:
        return self.bn.running_mean, self.bn.running_var

    def train_step(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any, Any]:
        xt = self._t(x).requires_grad_(True)
        self.bn.weight.grad = self.bn.bias.grad = None
        y = self.bn.train()(xt)
        y.backward(self._t(dy).to(y.dtype))
        return self._back(y.detach()), self._back(xt.grad), self.bn.weight.grad, self.bn.bias.grad

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        return self.train_step(x, dy)[1:]


#: The JAX functions of Keras layers, compiled once per layer configuration (``_jax_functions``).
_JAX_FUNCTIONS: dict[tuple, dict[str, Any]] = {}


def _jax_functions(layer: Any, built_shape: tuple) -> dict[str, Any]:
    """A Keras layer's stateless calls, compiled once per layer configuration and built shape (``jax.jit`` then
    compiles once per input shape).

    Running op by op, eager JAX would compile every operation for every new shape. The functions read ``layer``
    when they are traced; every layer of the same class, configuration and built shape (the rank fixes the reduced
    axes) shares them, since ``stateless_call`` uses only the variable values it is given.
    """
    import json

    import jax

    config = {k: v for k, v in layer.get_config().items() if k != "name"}
    key = (type(layer), json.dumps(config, sort_keys=True, default=str), built_shape)
    if key in _JAX_FUNCTIONS:
        return _JAX_FUNCTIONS[key]

    def train(tv: list, ntv: list, x: Any) -> Any:
        return layer.stateless_call(tv, ntv, x, training=True)

    def infer(tv: list, ntv: list, x: Any) -> Any:
        return layer.stateless_call(tv, ntv, x, training=False)[0]

    def step(tv: list, ntv: list, x: Any, dy: Any) -> tuple:
        def forward(x_in: Any, t: list) -> tuple:
            return layer.stateless_call(t, ntv, x_in, training=True)

        y, vjp, updated = jax.vjp(forward, x, tv, has_aux=True)
        dx, dtv = vjp(dy.astype(y.dtype))
        return y, dx, dtv, updated

    _JAX_FUNCTIONS[key] = {"train": jax.jit(train), "infer": jax.jit(infer), "step": jax.jit(step)}
    return _JAX_FUNCTIONS[key]


class KerasAdapter(Adapter):
    """``keras.layers.BatchNormalization`` (``"native"``) or ``bnref.layers.keras_bn.BatchNormalization`` (``"bnref"``).

    Runs under the backend Keras was imported with; on JAX through ``jax.jit(layer.stateless_call)``, as Keras' JAX
    trainer does (``jit=False``: the forward calls op by op, as a bare ``layer(x)`` does; the gradients always go
    through ``jax.vjp`` of the compiled call). Parameters and moving statistics are float32 (float64 for float64
    inputs, through the layer's dtype policy); half-precision inputs go in as they are. ``layer_kwargs`` go to the
    layer (``epsilon``, ``momentum``, ...); the from-scratch layer needs the TensorFlow backend.
    """

    convention = KERAS

    def __init__(
        self, implementation: str = "native", layout: str = "NHWC", jit: bool = True, **layer_kwargs: Any
    ) -> None:
        if implementation not in ("native", "bnref"):
            raise ValueError(f"implementation must be 'native' or 'bnref', got {implementation!r}")
        self.implementation, self.layout, self.layer_kwargs = implementation, _check_layout(layout), layer_kwargs
        self.jit = jit
        self.convention = KERAS.replace(
            **{{"epsilon": "eps"}.get(k, k): v for k, v in layer_kwargs.items() if k in ("epsilon", "momentum")}
        )
        self.name = "keras" if implementation == "native" else "bnref-keras"

    def _class(self) -> Any:
        import keras

        if self.implementation == "native":
            return keras.layers.BatchNormalization
        from bnref.layers import keras_bn

        return keras_bn.BatchNormalization

    def describe(self) -> str:
        import keras

        backend = keras.backend.backend()
        lib = __import__(backend)
        cls = self._class()
        where = "native" if self.implementation == "native" else "from scratch"
        if backend == "jax" and self.jit:
            where += ", called through jax.jit(stateless_call) as Keras' JAX trainer does"
        return (
            f"keras {keras.__version__} on the {backend} backend ({backend} {lib.__version__}): "
            f"{cls.__module__}.{cls.__name__} ({where}), layout {self.layout}, CPU"
        )

    def create(self, num_features: int, dtype: str) -> None:
        import keras

        cls = self._class()
        self.keras = keras
        self.backend = keras.backend.backend()
        self.dtype = dtype
        policy = "float64" if dtype == "float64" else "float32"
        self.layer = cls(axis=self.layout.index("C"), dtype=policy, **self.layer_kwargs)
        shape = [None] * len(self.layout)
        shape[self.layout.index("C")] = num_features
        self.layer.build(tuple(shape))
        if self.backend == "jax":
            self._jitted = _jax_functions(self.layer, tuple(shape))

    def _values(self) -> tuple[list, list]:
        return [v.value for v in self.layer.trainable_variables], [v.value for v in self.layer.non_trainable_variables]

    def _assign(self, values: list) -> None:
        for variable, value in zip(self.layer.non_trainable_variables, values, strict=True):
            variable.assign(value)

    def _t(self, a: np.ndarray) -> Any:
        ndtype = np.float32 if self.dtype != "float64" else np.float64
        return self.keras.ops.convert_to_tensor(np.asarray(a, ndtype), self.dtype)

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        pdtype = np.float64 if self.dtype == "float64" else np.float32
        self.layer.gamma.assign(gamma.astype(pdtype))
        self.layer.beta.assign(beta.astype(pdtype))

    def train_forward(self, x: np.ndarray) -> Any:
        if self.backend != "jax" or not self.jit:
            return self.layer(self._t(x), training=True)
        y, new_ntv = self._jitted["train"](*self._values(), self._t(x))
        self._assign(new_ntv)
        return y

    def infer_forward(self, x: np.ndarray) -> Any:
        if self.backend != "jax" or not self.jit:
            return self.layer(self._t(x), training=False)
        return self._jitted["infer"](*self._values(), self._t(x))

    def running_stats(self) -> tuple[Any, Any]:
        convert = self.keras.ops.convert_to_numpy
        return convert(self.layer.moving_mean.value), convert(self.layer.moving_variance.value)

    def train_step(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any, Any]:
        """One training call and its gradients by the backend's autodiff (``tf.GradientTape``, ``jax.vjp`` of the
        stateless call, whose new moving statistics are assigned afterwards as Keras' JAX trainer does, or
        ``torch.autograd``)."""
        xt = self._t(x)
        if self.backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                tape.watch(xt)
                y = self.layer(xt, training=True)
            dy_t = tf.cast(self._t(dy), y.dtype)
            dx, dgamma, dbeta = tape.gradient(y, [xt, self.layer.gamma, self.layer.beta], output_gradients=dy_t)
            return y, dx, dgamma, dbeta
        if self.backend == "torch":
            xt.requires_grad_(True)
            gamma, beta = self.layer.gamma.value, self.layer.beta.value
            gamma.grad = beta.grad = None
            y = self.layer(xt, training=True)
            y.backward(self._t(dy).to(device=y.device, dtype=y.dtype))
            return y.detach(), xt.grad, gamma.grad.detach().clone(), beta.grad.detach().clone()
        if self.backend == "jax":
            y, dx, dtv, new_ntv = self._jitted["step"](*self._values(), xt, self._t(dy))
            self._assign(new_ntv)
            grads = {v.name: g for v, g in zip(self.layer.trainable_variables, dtv, strict=True)}
            return y, dx, grads["gamma"], grads["beta"]
        raise NotApplicable(f"no gradient code for the Keras backend {self.backend!r}")

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        return self.train_step(x, dy)[1:]


class FlaxAdapter(Adapter):
    """``flax.linen.BatchNorm`` with the given ``use_fast_variance`` (Flax's default is True), channels last.

    The convention held to is ``bnref.conventions.FLAX`` (``FLAX_TWO_PASS`` with ``use_fast_variance=False``):
    eps 1e-5, ``r = momentum r + (1 - momentum) b`` with momentum 0.99, the biased variance, channels last.
    """

    def __init__(self, use_fast_variance: bool = True, layout: str = "NHWC", module: Any = None, **kwargs: Any) -> None:
        self.use_fast_variance, self.layout, self.kwargs = use_fast_variance, _check_layout(layout), kwargs
        self.module = module  # a drop-in for flax.linen.BatchNorm (bnref.layers.jax_bn's), or None for Flax's own
        self.name = "flax" if use_fast_variance else "flax-exact"
        self.convention = FLAX if use_fast_variance else FLAX_TWO_PASS

    def _class(self) -> Any:
        import flax.linen as nn

        return self.module if self.module is not None else nn.BatchNorm

    def describe(self) -> str:
        import flax
        import jax

        cls = self._class()
        return (
            f"flax {flax.__version__}, jax {jax.__version__}: {cls.__module__}.{cls.__name__}"
            f"(use_fast_variance={self.use_fast_variance}), layout {self.layout}, CPU"
        )

    def create(self, num_features: int, dtype: str) -> None:
        import jax
        import jax.numpy as jnp

        if dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("float64 needs jax_enable_x64")
        self.jax, self.jnp, self.dtype = jax, jnp, jnp.dtype(dtype)
        axis = self.layout.index("C") - len(self.layout)
        if not hasattr(self, "_train"):  # one module and one compiled function per mode, whatever the channels
            self.model = model = self._class()(axis=axis, use_fast_variance=self.use_fast_variance, **self.kwargs)

            def train(variables: Any, x: Any) -> Any:
                return model.apply(variables, x, use_running_average=False, mutable=["batch_stats"])

            def infer(variables: Any, x: Any) -> Any:
                return model.apply(variables, x, use_running_average=True)

            def step(variables: Any, x: Any, dy: Any) -> Any:
                def forward(params: Any, x_in: Any) -> Any:
                    return train({**variables, "params": params}, x_in)

                y, vjp, updates = jax.vjp(forward, variables["params"], x, has_aux=True)
                grads, dx = vjp(dy.astype(y.dtype))
                return y, dx, grads, updates

            def init(x: Any) -> Any:
                return model.init(jax.random.key(0), x, use_running_average=False)

            self._init, self._train, self._infer, self._step = (jax.jit(f) for f in (init, train, infer, step))
        shape = [2] * len(self.layout)
        shape[axis] = num_features
        self.variables = self._init(jnp.zeros(shape, self.dtype))

    def _t(self, a: np.ndarray) -> Any:
        return self.jnp.asarray(np.asarray(a, np.float32 if self.dtype != np.float64 else np.float64), self.dtype)

    def set_params(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        params = dict(self.variables["params"])
        params["scale"] = self.jnp.asarray(gamma, params["scale"].dtype)
        params["bias"] = self.jnp.asarray(beta, params["bias"].dtype)
        self.variables = {**self.variables, "params": params}

    def train_forward(self, x: np.ndarray) -> Any:
        y, updates = self._train(self.variables, self._t(x))
        self.variables = {**self.variables, **updates}
        return y

    def infer_forward(self, x: np.ndarray) -> Any:
        return self._infer(self.variables, self._t(x))

    def running_stats(self) -> tuple[Any, Any]:
        stats = self.variables["batch_stats"]
        return stats["mean"], stats["var"]

    def train_step(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any, Any]:
        y, dx, grads, updates = self._step(self.variables, self._t(x), self._t(dy))
        self.variables = {**self.variables, **updates}
        return y, dx, grads["scale"], grads["bias"]

    def backward(self, x: np.ndarray, dy: np.ndarray) -> tuple[Any, Any, Any]:
        return self.train_step(x, dy)[1:]


class JaxBnAdapter(FlaxAdapter):
    """``bnref.layers.jax_bn.BatchNorm``: the from-scratch drop-in for ``flax.linen.BatchNorm`` (custom_vjp)."""

    def __init__(self, layout: str = "NHWC", **kwargs: Any) -> None:
        from bnref.layers import jax_bn

        super().__init__(use_fast_variance=False, layout=layout, module=jax_bn.BatchNorm, **kwargs)
        self.name = "bnref-jax"
        self.convention = FLAX_TWO_PASS  # the drop-in always computes the two-pass variance


def make(name: str) -> Adapter:
    """The adapter of one of ``bnref.check.conformance.NAMES``; its ``name`` is set to ``name``."""
    makers = {
        "torch": lambda: TorchAdapter("native"),
        "bnref-torch": lambda: TorchAdapter("bnref"),
        "keras-tensorflow": lambda: KerasAdapter("native"),
        "keras-jax": lambda: KerasAdapter("native"),
        "keras-torch": lambda: KerasAdapter("native"),
        "bnref-keras": lambda: KerasAdapter("bnref"),
        "flax": lambda: FlaxAdapter(use_fast_variance=True),
        "flax-exact": lambda: FlaxAdapter(use_fast_variance=False),
        "bnref-jax": lambda: JaxBnAdapter(),
    }
    if name not in makers:
        raise ValueError(f"unknown implementation {name!r}; known: {', '.join(makers)}")
    adapter = makers[name]()
    adapter.name = name
    if name.startswith("keras-"):
        import keras

        wanted, backend = name.split("-", 1)[1], keras.backend.backend()
        if backend != wanted:
            raise ValueError(f"{name} needs KERAS_BACKEND={wanted}, but Keras was imported with {backend}")
    return adapter
