"""Device mesh ('data', 'fsdp', 'tensor') and the one table mapping logical axes to it."""

import math

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis names used by models/ -> mesh axes. Parameters are split over 'fsdp' along their
# model dimension (ZeRO-3 style) and over 'tensor' along heads / FFN width / vocabulary
# (Megatron style); activations' batch dimension over data and fsdp together.
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Sizes for ('data','fsdp','tensor'); one -1 takes whatever the others leave."""
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {sizes}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {sizes}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide the "
                         f"{num_devices} available devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices "
                         f"but {num_devices} are available; set one axis to -1 to fill")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    try:
        array = mesh_utils.create_device_mesh(shape, devices)
    except (AssertionError, ValueError, NotImplementedError):
        array = np.asarray(devices).reshape(shape)
    return Mesh(array, MESH_AXES)


def logical_shardings(abstract_tree, mesh: Mesh):
    """NamedShardings for a tree whose leaves may be nn.LogicallyPartitioned boxes.

    A dimension that the mesh axes of its rule do not divide (GPT-2's 50257-token vocabulary
    over 4 tensor shards) is replicated instead: JAX shards parameters evenly or not at all."""
    specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_tree), LOGICAL_RULES)
    shapes = nn.meta.unbox(abstract_tree)
    return jax.tree.map(lambda x, spec: NamedSharding(mesh, divisible_spec(spec, x.shape, mesh)),
                        shapes, specs, is_leaf=lambda x: isinstance(x, P) or x is None)


def divisible_spec(spec: P | None, shape, mesh: Mesh) -> P:
    """`spec` without the mesh axes that do not divide their dimension."""
    if spec is None:
        return P()
    def keep(axes, size):
        names = axes if isinstance(axes, tuple) else (axes,)
        return axes if axes is None or size % math.prod(mesh.shape[a] for a in names) == 0 \
            else None
    return P(*(keep(axes, size) for axes, size in zip(spec, shape)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_process_rows(mesh: Mesh, batch_size: int) -> None:
    """Each process feeds only its own batch_size / process_count rows (its data shard), so the
    devices of one process must not need rows that another process loads: keep the 'tensor'
    axis (and any replication of the batch) within a host."""
    per_process = batch_size // jax.process_count()
    rows: dict[int, set] = {}
    for device, index in batch_sharding(mesh).devices_indices_map((batch_size,)).items():
        rows.setdefault(device.process_index, set()).add(index[0].indices(batch_size))
    for process, blocks in rows.items():
        need = sum(stop - start for start, stop, _ in blocks)
        if need != per_process:
            raise ValueError(
                f"with mesh {dict(mesh.shape)} the devices of process {process} hold {need} of "
                f"the {batch_size} rows of each (micro)batch, but every process loads "
                f"{per_process}: make data x fsdp a multiple of the {jax.process_count()} "
                f"processes, with the tensor axis inside a host")


def global_batch(batch: dict, batch_sharding) -> dict:
    """Per-process numpy batch -> global jax arrays sharded over data x fsdp."""
    def put(x):
        x = np.asarray(x)
        shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(batch_sharding, x, shape)
    return jax.tree.map(put, batch)


def with_logical_rules(fn):
    """fn traced under the logical axis rules, so the models' activation constraints
    (nn.with_logical_constraint) resolve to mesh axes."""
    def wrapped(*args):
        with nn.logical_axis_rules(LOGICAL_RULES):
            return fn(*args)
    return wrapped
