"""A small Vision Transformer for 28-64px images, the ViT of cross-architecture distillation benchmarks.

Default configuration (about 3.2M parameters at 32px): 4x4 patches (7x7 = 49 tokens at 28px, 8x8 = 64 at
32px, 16x16 = 256 at 64px), width 256, 6 pre-norm blocks, 8 heads, MLP width 512, a class token and learned
position embeddings. Attention is written out (softmax(QK^T/sqrt(d))V) so higher-order gradients work.
"""
from __future__ import annotations

import torch
from torch import nn

from dd.models.layers import image_hw


class Attention(nn.Module):
    """Multi-head self-attention over (batch, tokens, dim)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT width {dim} is not divisible by {heads} heads; pick dim a multiple of heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding -> [CLS] + positions -> depth x Block -> LayerNorm -> classifier on the class token."""

    def __init__(self, channels: int, num_classes: int, image_size=(32, 32), patch_size: int = 4, dim: int = 256,
                 depth: int = 6, heads: int = 8, mlp_dim: int = 512, dropout: float = 0.0):
        super().__init__()
        h, w = image_hw(image_size)
        if h % patch_size or w % patch_size:
            raise ValueError(f"ViT patch size {patch_size} does not divide the image size {(h, w)}; "
                             f"pass patch_size= a divisor of both sides (4 suits 28, 32 and 64px)")
        self.grid = (h // patch_size, w // patch_size)
        self.patch_embed = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.feature_dim = dim
        self.classifier = nn.Linear(dim, num_classes)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens after every block, laid out as (batch, dim, grid_h, grid_w) maps."""
        x, outs = self._tokens(x), []
        for blk in self.blocks:
            x = blk(x)
            outs.append(x[:, 1:].transpose(1, 2).reshape(len(x), -1, *self.grid))
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
