"""iwm import-ijepa on small checkpoints made here with the I-JEPA format's key names and shapes."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.layers import build_sincos2d_pos_embed

import iwm
from iwm import config
from iwm.cli import main
from iwm.ijepa import ImportFormatError, convert, their_channel_order
from iwm.models import IWM, Encoder, Predictor
from iwm.warmstart import gain_conditioning, warm_start, zero_action_identity

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, DEPTH, HEADS, PATCH, GRID = 32, 2, 2, 4, 4  # a 16 px ViT with a 4x4 grid
P_WIDTH, P_DEPTH = 16, 2


def their_positions(grid: int, dim: int) -> torch.Tensor:
    """The format's fixed 2-D sin-cos positions (1, N, dim): channels [sin x, cos x, sin y, cos y],
    x the column, each over dim/4 frequencies 1 / 10000^(k / (dim/4))."""
    q = dim // 4
    freq = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    x = x.reshape(-1, 1).double() * freq
    y = y.reshape(-1, 1).double() * freq
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float().unsqueeze(0)


def small_weights(g: torch.Generator):
    """A drawer of random weights from ``g``, at the scale of a trained network's."""
    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    return draw


def vit_blocks(prefix: str, dim: int, depth: int, hidden: int, g: torch.Generator) -> dict:
    r = small_weights(g)
    out = {}
    for i in range(depth):
        b = f"{prefix}{i}."
        out |= {b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim), b + "attn.qkv.weight": r(3 * dim, dim),
                b + "attn.qkv.bias": r(3 * dim), b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
                b + "norm2.weight": 1 + r(dim), b + "norm2.bias": r(dim), b + "mlp.fc1.weight": r(hidden, dim),
                b + "mlp.fc1.bias": r(hidden), b + "mlp.fc2.weight": r(dim, hidden), b + "mlp.fc2.bias": r(dim)}
    return out


def ijepa_encoder(seed: int, dim=DIM, hidden=4 * DIM) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = small_weights(g)
    state = {"patch_embed.proj.weight": r(dim, 3, PATCH, PATCH), "patch_embed.proj.bias": r(dim),
             "pos_embed": their_positions(GRID, dim), **vit_blocks("blocks.", dim, DEPTH, hidden, g),
             "norm.weight": 1 + r(dim), "norm.bias": r(dim)}
    return {f"module.{k}": v for k, v in state.items()}


def ijepa_predictor(seed: int, dim=DIM) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = small_weights(g)
    state = {"predictor_embed.weight": r(P_WIDTH, dim), "predictor_embed.bias": r(P_WIDTH),
             "mask_token": r(1, 1, P_WIDTH), "predictor_pos_embed": their_positions(GRID, P_WIDTH),
             **vit_blocks("predictor_blocks.", P_WIDTH, P_DEPTH, 4 * P_WIDTH, g),
             "predictor_norm.weight": 1 + r(P_WIDTH), "predictor_norm.bias": r(P_WIDTH),
             "predictor_proj.weight": r(dim, P_WIDTH), "predictor_proj.bias": r(dim)}
    return {f"module.{k}": v for k, v in state.items()}


def ijepa_checkpoint(dim=DIM, hidden=4 * DIM) -> dict:
    return {"encoder": ijepa_encoder(0, dim, hidden), "predictor": ijepa_predictor(1, dim),
            "target_encoder": ijepa_encoder(2, dim, hidden),
            "opt": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}, "scaler": None, "epoch": 7,
            "loss": 0.31, "batch_size": 8, "world_size": 1, "lr": 1e-3}


def image_folder(root, size=16):
    """train/ and test/ with two class folders of small random images."""
    g = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture
def ckpt_file(tmp_path):
    path = tmp_path / "ijepa-ep7.pth.tar"
    torch.save(ijepa_checkpoint(), path)
    return path


def reference_encoder(state: dict) -> Encoder:
    """The format's encoder: a plain ViT on the checkpoint's weights and positions as they are."""
    enc = Encoder(GRID * PATCH, PATCH, DIM, DEPTH, HEADS).eval()
    enc.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return enc


def ijepa_predictor_forward(state: dict, context: torch.Tensor, context_idx: torch.Tensor,
                            target_idx: torch.Tensor, heads: int = HEADS) -> torch.Tensor:
    """I-JEPA's predictor as published (VisionTransformerPredictor built by vit_predictor),
    written out here on the checkpoint's own weights and positions: predictor_embed, the
    positions of the context added, mask tokens plus the targets' positions appended, pre-norm
    ViT blocks, the final norm on the mask tokens, predictor_proj. Every LayerNorm: eps 1e-6."""
    s = {k.removeprefix("module."): v for k, v in state.items()}
    norm = lambda t, n: F.layer_norm(t, t.shape[-1:], s[n + ".weight"], s[n + ".bias"], eps=1e-6)  # noqa: E731
    linear = lambda t, n: F.linear(t, s[n + ".weight"], s[n + ".bias"])  # noqa: E731
    pos = s["predictor_pos_embed"]

    def at(idx):
        return torch.gather(pos.expand(len(idx), -1, -1), 1, idx.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))

    x = torch.cat([linear(context, "predictor_embed") + at(context_idx), s["mask_token"] + at(target_idx)], dim=1)
    for i in range(P_DEPTH):
        b = f"predictor_blocks.{i}."
        y = norm(x, b + "norm1")
        n, length, width = y.shape
        q, k, v = linear(y, b + "attn.qkv").reshape(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (width // heads) ** -0.5).softmax(dim=-1)
        x = x + linear((attn @ v).transpose(1, 2).reshape(n, length, width), b + "attn.proj")
        x = x + linear(F.gelu(linear(norm(x, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
    return linear(norm(x, "predictor_norm")[:, -target_idx.shape[1]:], "predictor_proj")


def test_import_computes_the_ijepa_networks_with_our_positions(ckpt_file, tmp_path):
    ckpt = torch.load(ckpt_file, weights_only=True)
    assert main(["import-ijepa", str(ckpt_file), "--out", str(tmp_path / "imp"), "--num-heads", str(HEADS)]) == 0
    run = iwm.load(tmp_path / "imp")
    m, p = run.config.model, run.config.predictor
    assert (run.config.data.image_size, m.patch_size, m.embed_dim, m.depth, m.num_heads) == (16, 4, 32, 2, 2)
    assert (p.width, p.depth, p.num_heads, p.conditioning, run.config.aug.strength) == (16, 2, 2, "none", 0.0)
    assert torch.allclose(run.encoder.pos_embed, build_sincos2d_pos_embed([GRID, GRID], DIM).unsqueeze(0))
    order = their_channel_order(DIM)
    assert sorted(order.tolist()) == list(range(DIM))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ref_ctx, ref_tgt = reference_encoder(ckpt["encoder"]), reference_encoder(ckpt["target_encoder"])
    with torch.no_grad():
        # the same function: I-JEPA's tokens, channels reordered
        assert torch.allclose(run.encoder.tokens(x), ref_ctx.tokens(x)[..., order], atol=1e-5)
        ours, theirs = run.target_encoder.tokens(x), ref_tgt.tokens(x)
        assert torch.allclose(ours, theirs[..., order], atol=1e-5)
        ctx = torch.tensor([[0, 1, 2, 5, 6, 9, 10, 11]] * 3)
        tgt = torch.tensor([[3, 7, 15]] * 3)
        keep = lambda t: torch.gather(t, 1, ctx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
        got = run.predictor(keep(ours), ctx, tgt)
        want = ijepa_predictor_forward(ckpt["predictor"], keep(theirs), ctx, tgt)
        assert torch.allclose(got, want[..., order], atol=1e-5)
    meta = json.loads((tmp_path / "imp" / "config.json").read_text())
    assert meta["license"] == "cc-by-nc-4.0" and "epoch 7" in meta["source"]
    assert "cc-by-nc-4.0" in (tmp_path / "imp" / "README.md").read_text()


def test_imported_predictor_is_ijepas_forward_pass_to_fp32_precision(ckpt_file, tmp_path):
    assert main(["import-ijepa", str(ckpt_file), "--out", str(tmp_path / "imp"), "--num-heads", str(HEADS)]) == 0
    run = iwm.load(tmp_path / "imp")  # as saved and read back
    ckpt = torch.load(ckpt_file, weights_only=True)
    order = their_channel_order(DIM)
    g = torch.Generator().manual_seed(5)
    theirs = torch.randn(3, 8, DIM, generator=g)  # context tokens in I-JEPA's channel order
    ctx, tgt = torch.tensor([[0, 1, 2, 5, 6, 9, 10, 11]] * 3), torch.tensor([[3, 7, 15]] * 3)
    with torch.no_grad():
        got = run.predictor(theirs[..., order], ctx, tgt)
        want = ijepa_predictor_forward(ckpt["predictor"], theirs, ctx, tgt)[..., order]
    # fp32 rounding is below 1e-6 here; LayerNorms with eps 1e-5 instead of 1e-6 move it by 3e-5
    assert (got - want).abs().max() < 3e-6
    assert run.config.predictor.norm_eps == 1e-6  # recorded, so the folder reloads as it was imported


def test_our_predictors_and_the_shipped_ones_keep_layernorm_eps_1e5():
    from iwm import registry

    shipped = [config.from_dict(e["config"]) for e in registry.manifest()["models"].values()]
    assert shipped and all(c.predictor.norm_eps == 1e-5 for c in [config.from_dict(None), *shipped])
    pred = Predictor(GRID, DIM, P_WIDTH, P_DEPTH, HEADS)
    assert {m.eps for m in pred.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}


def test_a_file_holding_python_objects_is_refused_in_one_line(tmp_path, capsys):
    crafted = tmp_path / "crafted.pth.tar"
    torch.save({"encoder": NotATensor(), "predictor": {}, "target_encoder": {}}, crafted)
    assert main(["import-ijepa", str(crafted), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"iwm: error: cannot load checkpoint {crafted}: not a plain checkpoint of tensors")
    assert "NotATensor" in lines[0] and not (tmp_path / "o").exists()


class NotATensor:
    """What a crafted checkpoint holds: an object of a class that unpickling would import and build."""


def test_eval_leverage_and_pretrain_work_on_an_imported_checkpoint(ckpt_file, tmp_path, capsys):
    imp = tmp_path / "imp"
    assert main(["import-ijepa", str(ckpt_file), "--out", str(imp), "--num-heads", str(HEADS)]) == 0
    data = ["data.dataset=synthetic", "data.synthetic_size=32", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(["eval", "knn", str(imp), *data, "eval.knn_train=16", "eval.knn_test=8"]) == 0
    folder = image_folder(tmp_path / "images")  # the imported config reads an ImageNet-style folder
    assert main(["leverage", "probe", str(imp), "--data", str(folder), "--kind", "linear", "--epochs", "1",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "p.json")]) == 0
    # continued as an IWM: the imported run's architecture, a conditioned predictor, its own directory
    train = [*data, "data.batch_size=8", "data.num_workers=0", "optim.max_steps=1", "run.device=cpu",
             "run.precision=fp32", "run.progress=false", "eval.knn=false"]
    assert main(["pretrain", f"run.init_from={imp}", f"run.out_dir={tmp_path / 'iwm'}",
                 "predictor.conditioning=feature", "aug.strength=1", *train]) == 0
    cont = iwm.load(tmp_path / "iwm")
    assert cont.step == 1 and cont.config.predictor.conditioning == "feature"
    assert cont.config.model.embed_dim == DIM
    # or in place: the imported folder as run.out_dir trains from its own weights
    assert main(["pretrain", f"run.out_dir={imp}", *train]) == 0
    assert iwm.load(imp).step == 1 and (imp / "checkpoints" / "latest.pt").is_file()


def test_warm_start_gains_conditioning_with_a_zeroed_last_layer(ckpt_file, tmp_path):
    assert main(["import-ijepa", str(ckpt_file), "--out", str(tmp_path / "imp"), "--num-heads", str(HEADS)]) == 0
    source = iwm.load(tmp_path / "imp")
    cfg = config.from_dict(source.config.to_dict(), [f"run.init_from={tmp_path / 'imp'}",
                                                      "predictor.conditioning=feature"])
    assert cfg.predictor.cond_residual  # the imported config continues with residual conditioning
    model = IWM(Encoder(16, PATCH, DIM, DEPTH, HEADS),
                Predictor(GRID, DIM, P_WIDTH, P_DEPTH, HEADS, "feature", cond_residual=True,
                          norm_eps=cfg.predictor.norm_eps))
    assert warm_start(model, cfg) == str(tmp_path / "imp")
    for k, v in source.target_encoder.state_dict().items():
        assert torch.equal(model.target_encoder.state_dict()[k], v)
    own = model.predictor.state_dict()
    for k, v in source.predictor.state_dict().items():
        assert torch.equal(own[k], v)
    assert not own["cond.2.weight"].any() and not own["cond.2.bias"].any()
    assert own["cond.0.weight"].abs().sum() > 0  # the rest of the MLP keeps its random init: gradients flow
    # the warm-started IWM predictor at a = 0 is the imported I-JEPA predictor
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 6, DIM, generator=g)
    ctx, tgt = torch.tensor([[0, 1, 4, 5, 8, 9]] * 2), torch.tensor([[2, 7]] * 2)
    with torch.no_grad():
        assert torch.allclose(model.predictor.eval()(tokens, ctx, tgt, torch.zeros(2, 7)),
                              source.predictor(tokens, ctx, tgt), atol=1e-6)


def test_init_from_weights_of_another_architecture_is_one_clear_line(ckpt_file, tmp_path, capsys):
    assert main(["import-ijepa", str(ckpt_file), "--out", str(tmp_path / "imp"), "--num-heads", str(HEADS)]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--config", "cifar10_equi", f"run.init_from={tmp_path / 'imp'}", "data.dataset=synthetic",
                 f"run.out_dir={tmp_path / 'run'}", "data.num_workers=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iwm: error: run.init_from: the encoder of") and "shape" in err and "\n" not in err


def test_zero_action_leaves_the_ijepa_predictor_output_unchanged():
    torch.manual_seed(0)
    plain = Predictor(GRID, DIM, P_WIDTH, P_DEPTH, HEADS, conditioning="none").eval()
    cond = Predictor(GRID, DIM, P_WIDTH, P_DEPTH, HEADS, conditioning="feature", cond_residual=True).eval()
    state, gained = gain_conditioning(cond.state_dict(), plain.state_dict())
    assert gained
    cond.load_state_dict(state)
    zero_action_identity(cond)
    g = torch.Generator().manual_seed(1)
    ctx_tokens = torch.randn(2, 6, DIM, generator=g)
    ctx, tgt = torch.tensor([[0, 1, 4, 5, 8, 9]] * 2), torch.tensor([[2, 3, 7]] * 2)
    with torch.no_grad():
        assert torch.allclose(cond(ctx_tokens, ctx, tgt, torch.zeros(2, cond.action_dim)),
                              plain(ctx_tokens, ctx, tgt), atol=1e-6)
        # and any action: the conditioning starts as a no-op, which training then moves away from
        assert torch.allclose(cond(ctx_tokens, ctx, tgt, torch.randn(2, cond.action_dim, generator=g)),
                              plain(ctx_tokens, ctx, tgt), atol=1e-6)


def test_vit_g_mlp_ratio_is_read_from_the_shapes():
    dim, hidden = 44, 192  # 44 x 48/11 = 192, ViT-g's ratio at a small width
    ckpt = ijepa_checkpoint(dim=dim, hidden=hidden)
    ckpt["predictor"] = ijepa_predictor(1, dim=dim)
    cfg, states = convert(ckpt, num_heads=4)
    assert math.isclose(cfg.model.mlp_ratio, 48 / 11) and int(dim * cfg.model.mlp_ratio) == hidden
    assert states["encoder"]["blocks.0.mlp.fc1.weight"].shape == (hidden, dim)


def test_files_that_are_not_ijepa_checkpoints_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, bad)
    assert main(["import-ijepa", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not an I-JEPA checkpoint: no encoder, predictor, target_encoder" in capsys.readouterr().err
    ckpt = ijepa_checkpoint()
    ckpt["encoder"]["module.pos_embed"] = torch.randn(1, GRID * GRID, DIM)  # learned, not sin-cos
    with pytest.raises(ImportFormatError, match="not the fixed 2-D sin-cos"):
        convert(ckpt, num_heads=HEADS)
    with pytest.raises(ImportFormatError, match="give --num-heads"):
        convert(ijepa_checkpoint())
