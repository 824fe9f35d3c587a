"""MiniCPM-V 2.6's perceiver resampler: 64 learned queries cross-attend to one slice's patches.

transformers has no class for it, so it is rebuilt here from the published modeling code's
structure (parameter names match the checkpoint: query, kv_proj, attn, ln_q, ln_kv, ln_post, proj).
"""

from __future__ import annotations

import torch
from torch import nn


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(grid_h, grid_w, dim) fixed 2-D sin-cos table: first half encodes rows, second half columns."""
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def one_axis(n: int) -> torch.Tensor:
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim/2)

    rows = one_axis(grid_h)[:, None, :].expand(grid_h, grid_w, dim // 2)
    cols = one_axis(grid_w)[None, :, :].expand(grid_h, grid_w, dim // 2)
    return torch.cat([rows, cols], dim=-1).float()


class Resampler(nn.Module):
    def __init__(self, queries: int, embed: int, heads: int, kv_dim: int, pos_grid: int,
                 device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.query = nn.Parameter(torch.empty(queries, embed, **fk))
        self.kv_proj = nn.Linear(kv_dim, embed, bias=False, **fk)
        # batch_first=False and need_weights=True as in MiniCPM: the bmm + softmax path, not SDPA
        self.attn = nn.MultiheadAttention(embed, heads, **fk)
        self.ln_q = nn.LayerNorm(embed, eps=1e-6, **fk)
        self.ln_kv = nn.LayerNorm(embed, eps=1e-6, **fk)
        self.ln_post = nn.LayerNorm(embed, eps=1e-6, **fk)
        self.proj = nn.Parameter(torch.empty(embed, embed, **fk))
        # derived from the shape only, so not part of the checkpoint
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(embed, pos_grid, pos_grid).to(**fk), persistent=False
        )
        with torch.no_grad():
            nn.init.trunc_normal_(self.query, std=0.02)
            nn.init.normal_(self.proj, std=embed ** -0.5)

    def forward(self, x: torch.Tensor, tgt_sizes: list[tuple[int, int]]) -> torch.Tensor:
        """x: (slices, max_patches, kv_dim); tgt_sizes: patch grid (h, w) per slice.

        Returns (slices, queries, embed).
        """
        n, max_len, _ = x.shape
        pad = torch.ones(n, max_len, dtype=torch.bool, device=x.device)
        pos = torch.zeros(n, max_len, self.pos_embed.shape[-1], dtype=x.dtype, device=x.device)
        for i, (h, w) in enumerate(tgt_sizes):
            pad[i, : h * w] = False
            pos[i, : h * w] = self.pos_embed[:h, :w].reshape(h * w, -1)

        kv = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)  # (L, N, E)
        q = self.ln_q(self.query)[:, None, :].expand(-1, n, -1)  # (Q, N, E)
        out = self.attn(q, kv + pos.permute(1, 0, 2), kv, key_padding_mask=pad)[0]
        return self.ln_post(out.permute(1, 0, 2)) @ self.proj
