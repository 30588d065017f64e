"""STC-Cacher's ``paper`` algorithm written out plainly, as a reference for the cacher's tests.

Follows the released code as ``/work/shared/reference/methods.md`` section 1.1 describes it,
with ``[T, C]`` tensors, explicit softmax attention and per-frame state in plain dicts; it shares
nothing with :mod:`cacher` but the layer records' weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cacher.layers import MLP, EncoderLayer, LayerNorm, Linear, Rotary, SeparateQKV


def _lin(p: Linear, x: torch.Tensor) -> torch.Tensor:
    y = x @ p.weight.T
    return y if p.bias is None else y + p.bias


def _ln(p: LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + p.eps) * p.weight
    return y if p.bias is None else y + p.bias


def _qkv_weights(layer: EncoderLayer) -> tuple[Linear, Linear, Linear]:
    if isinstance(layer.qkv, SeparateQKV):
        return layer.qkv.q, layer.qkv.k, layer.qkv.v
    w, b = layer.qkv.qkv.weight, layer.qkv.qkv.bias
    c = w.shape[0] // 3
    parts = [
        Linear(w[i * c : (i + 1) * c], None if b is None else b[i * c : (i + 1) * c])
        for i in range(3)
    ]
    return parts[0], parts[1], parts[2]


def _rope(x: torch.Tensor, rotary: Rotary | None, rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotate ``x`` ``[n, C]`` head by head with the angles of token ``rows``."""
    if rotary is None:
        return x
    n, c = x.shape
    hd = c // heads
    xh = x.view(n, heads, hd)
    cos, sin = rotary.cos[rows][:, None, :], rotary.sin[rows][:, None, :]
    half = torch.cat([-xh[..., hd // 2 :], xh[..., : hd // 2]], dim=-1)
    return (xh * cos + half * sin).reshape(n, c)


def _attention(
    layer: EncoderLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Softmax attention of query rows ``q`` ``[n, C]`` over ``k``, ``v`` ``[T, C]`` per head."""
    heads = layer.num_heads
    n, c = q.shape
    t = k.shape[0]
    hd = c // heads
    qh = q.view(n, heads, hd).transpose(0, 1)
    kh = k.view(t, heads, hd).transpose(0, 1)
    vh = v.view(t, heads, hd).transpose(0, 1)
    weights = torch.softmax(qh @ kh.transpose(1, 2) * layer.scale, dim=-1)
    return (weights @ vh).transpose(0, 1).reshape(n, c)


def _mlp(layer: EncoderLayer, x: torch.Tensor) -> torch.Tensor:
    assert isinstance(layer.mlp, MLP) and isinstance(layer.norm2, LayerNorm)
    y = _lin(layer.mlp.fc1, _ln(layer.norm2, x))
    return _lin(layer.mlp.fc2, F.gelu(y, approximate="tanh"))


@dataclass
class PlainSTC:
    """One stream of the released STC-Cacher: ``chunk_idx % N == 0`` frames are references."""

    layers: tuple[EncoderLayer, ...]
    ratio: float = 0.25
    interval: int = 2
    group: int = 1
    #: token indices listed group by group (None: groups are runs of ``group`` tokens)
    order: torch.Tensor | None = None
    chunk_idx: int = 0
    cache: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: the dynamic token set of each layer of the last frame (empty for a reference frame)
    dynamic: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, rotary: Rotary | None = None) -> torch.Tensor:
        """One frame ``[T, C]`` -> the last layer's output ``[T, C]``."""
        refresh = self.chunk_idx % self.interval == 0 or not self.cache
        self.chunk_idx += 1
        self.dynamic = []
        T = x.shape[0]
        every = torch.arange(T)
        for i, layer in enumerate(self.layers):
            assert isinstance(layer.norm1, LayerNorm)
            wq, wk, wv = _qkv_weights(layer)
            heads = layer.num_heads
            h1 = _ln(layer.norm1, x)
            k = _rope(_lin(wk, h1), rotary, every, heads)
            if refresh:
                q = _rope(_lin(wq, h1), rotary, every, heads)
                v = _lin(wv, h1)
                a = _lin(layer.out, _attention(layer, q, k, v))
                h = x + a
                m = _mlp(layer, h)
                self.cache[i] = {"X": x, "K": k, "V": v, "A": a, "M": m}
                x = h + m
                continue
            ref = self.cache[i]
            s = F.cosine_similarity(k, ref["K"], dim=-1)  # [T]
            order = torch.arange(T) if self.order is None else self.order
            s = s[order].view(-1, self.group).mean(1)
            n = max(1, int(s.shape[0] * self.ratio))
            picked = s.topk(n, largest=False).indices
            index = order.view(-1, self.group)[picked].flatten().sort().values
            self.dynamic.append(index)
            q_i = _rope(_lin(wq, h1[index]), rotary, index, heads)
            v_i = _lin(wv, h1[index])
            v = ref["V"].clone()
            v[index] = v_i
            a = ref["A"].clone()
            a[index] = _lin(layer.out, _attention(layer, q_i, k, v))
            h = x + a
            m = ref["M"].clone()
            m[index] = _mlp(layer, h[index])
            x = h + m
        return x


def plain_adaptive_frame(
    layers: tuple[EncoderLayer, ...],
    cache: dict[int, dict[str, torch.Tensor]],
    x: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``adaptive`` mode's selective forward of one frame ``[T, C]`` against a reference cache
    (as :class:`PlainSTC` fills it): a token is recomputed at a layer when its layer-normalised
    input's cosine to the reference's input at that layer is under ``1 - threshold``; static
    tokens keep the reference's K, V and branch outputs. Returns the output and the per-layer
    dynamic sets. (No floor, no ceiling.)"""
    dynamic = []
    for i, layer in enumerate(layers):
        assert isinstance(layer.norm1, LayerNorm)
        ref = cache[i]
        wq, wk, wv = _qkv_weights(layer)
        h1 = _ln(layer.norm1, x)
        change = 1 - F.cosine_similarity(h1, _ln(layer.norm1, ref["X"]), dim=-1)
        index = torch.nonzero(change > threshold).flatten()
        dynamic.append(index)
        k, v, a, m = (ref[name].clone() for name in ("K", "V", "A", "M"))
        k[index] = _lin(wk, h1[index])
        v[index] = _lin(wv, h1[index])
        a[index] = _lin(layer.out, _attention(layer, _lin(wq, h1[index]), k, v))
        h = x + a
        m[index] = _mlp(layer, h[index])
        x = h + m
    return x, dynamic
