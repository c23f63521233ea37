"""SFT data: chat records -> token shards plus a parallel loss mask (the `chat_tokenize` stage).

Input records are `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`.
Each conversation is rendered with a Jinja chat template in Hugging Face's dialect (the
variables `messages`, `bos_token`, `eos_token`, `add_generation_prompt`; the assistant's
part of the text inside `{% generation %}...{% endgeneration %}` blocks, as
`apply_chat_template(return_assistant_tokens_mask=True)` expects). The rendered text is cut at
the generation blocks and each piece is tokenized on its own, so the mask is exact at the
boundaries: 1 on the tokens of every assistant block (its content and end token), 0 elsewhere.
Tokenizing the prompt part alone is also what inference does (the prompt ends where the
generation starts).

Output: per domain and task `<domain>_<rank>.bin/.idx` (tokens, as the tokenize stage writes
them) and `<domain>_<rank>_mask.bin/.idx` (one uint8 per token, the same documents), listed in
manifest.json with `loss_mask` per shard and an `sft` section (template, sequence length).
Removed (stats.json, removed_samples/): `chat_tokenize:no_assistant_turn`,
`chat_tokenize:no_assistant_tokens` (the template marks none), `chat_tokenize:too_long` (more
than `chat_tokenize.seq_length` + 1 tokens: dropped whole, never cut), `chat_tokenize:
template_error` (rendering this record failed). Records that are not chats go to rejects/ as
`bad_record` with file, line and what is wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.tokens.megatron_tokenizer import MegatronTokenizedFile

from data_prep.accounting import Ledger, reason_key
from data_prep.config import ChatTokenizeConfig, ReadConfig
from data_prep.reader import RecordReader
from data_prep.shards import _slug, open_tokenizer, write_shard_info

ROLES = ("system", "user", "assistant")
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{ 'Assistant:' }}"
    "{%- generation %}{{ ' ' + message['content'] + eos_token }}{%- endgeneration %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'Assistant:' }}{%- endif %}"
)
"""DeepSeek-LLM's chat format (`User: ...\\n\\nAssistant: ...<eos>`) in plain-text markers, so a
tokenizer needs no new special tokens; the conversation starts with `bos_token`."""
TEMPLATES = {"deepseek": DEEPSEEK_TEMPLATE}
"""Named templates `chat_tokenize.chat_template` may give instead of a file or a string."""
_START, _END = "\ue000", "\ue001"  # private-use characters bracketing a generation block
_MARKS = re.compile(f"([{_START}{_END}])")
MASK_SUFFIX = "_mask"


class TemplateError(ValueError):
    """A chat template that cannot be used (one line)."""


def _tokenizer_config(tokenizer_path: str) -> dict:
    path = Path(tokenizer_path).parent / "tokenizer_config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """A tokenizer_config.json token entry: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def resolve_template(spec: str, tokenizer_path: str) -> str:
    """The template text `chat_tokenize.chat_template` names: a name in TEMPLATES, `tokenizer`
    (the chat_template of the tokenizer_config.json next to tokenizer.json), a file, or the
    Jinja text itself."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if spec == "tokenizer":
        found = _tokenizer_config(tokenizer_path).get("chat_template")
        if isinstance(found, list):  # [{name, template}, ...]: the default one
            found = next((t.get("template") for t in found if t.get("name") == "default"), None)
        if not isinstance(found, str) or not found.strip():
            raise TemplateError(
                f"chat_tokenize.chat_template=tokenizer: tokenizer {tokenizer_path} has no "
                f"chat_template (no tokenizer_config.json with one next to it); set "
                f"chat_tokenize.chat_template={'|'.join(TEMPLATES)}|PATH|'<jinja text>'"
            )
        return found
    if "{{" in spec or "{%" in spec:
        return spec
    path = Path(spec).expanduser()
    if path.is_file():
        return path.read_text()
    raise TemplateError(
        f"chat_tokenize.chat_template={spec!r}: not a template name ({', '.join(TEMPLATES)}, "
        f"tokenizer), an existing file, or Jinja text"
    )


def renderer_for(cfg: ChatTokenizeConfig) -> ChatRenderer:
    """The checked renderer of `chat_tokenize` (tokenizer path, template, bos/eos); raises a
    one-line ValueError before anything is written."""
    tok_path = tokenizer_path(cfg)
    tok_cfg = _tokenizer_config(tok_path)
    bos = _token_text(tok_cfg.get("bos_token")) or cfg.eod_token
    eos = _token_text(tok_cfg.get("eos_token")) or cfg.eod_token
    return ChatRenderer(resolve_template(cfg.chat_template, tok_path), bos, eos)


def tokenizer_path(cfg: ChatTokenizeConfig) -> str:
    path = Path(str(cfg.tokenizer)).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"chat_tokenize.tokenizer does not exist: {cfg.tokenizer}")
    return str(path)


def _environment() -> Any:
    """HF's chat-template Jinja dialect (sandboxed, trim/lstrip blocks, loop controls,
    raise_exception) with `{% generation %}` blocks bracketed by marker characters."""
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationMarks(Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller: Any) -> str:
            return _START + caller() + _END

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationMarks, loopcontrols]
    )
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env


PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Q"},
    {"role": "assistant", "content": "A"},
]


class ChatRenderer:
    """A compiled chat template: `segments(messages)` -> [(text, is_assistant), ...]."""

    def __init__(self, template: str, bos_token: str, eos_token: str):
        from jinja2 import TemplateError as JinjaError

        self.source, self.bos_token, self.eos_token = template, bos_token, eos_token
        try:
            self.template = _environment().from_string(template)
            probe = self.segments(PROBE)
        except (JinjaError, TemplateError) as e:
            raise TemplateError(f"chat template does not render: {_one_line(e)}") from None
        if not any(is_asst and "A" in text for text, is_asst in probe):
            raise TemplateError(
                "chat template marks no assistant text: wrap each assistant message (content and "
                "end token) in {% generation %}...{% endgeneration %} so the loss mask is known"
            )

    def generation_prompt(self, messages: list[dict]) -> str:
        """The text a model continues to answer `messages` (no assistant turn): the template
        rendered with `add_generation_prompt` (what GRPO and evaluation prompt with)."""
        text = self.template.render(
            messages=messages,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            add_generation_prompt=True,
        )
        return _MARKS.sub("", text)

    def segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        text = self.template.render(
            messages=messages,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            add_generation_prompt=False,
        )
        out: list[tuple[str, bool]] = []
        inside = False
        for part in _MARKS.split(text):
            if part in (_START, _END):
                if (part == _START) == inside:
                    raise TemplateError("nested or unbalanced {% generation %} blocks")
                inside = part == _START
            elif part:
                out.append((part, inside))
        if inside:
            raise TemplateError("unclosed {% generation %} block")
        return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def message_problem(messages: Any) -> str | None:
    """What makes `messages` not a chat (None: it is one)."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role is {m.get('role')!r}, expected one of {ROLES}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content is not a string"
        if _START in m["content"] or _END in m["content"]:
            return f"messages[{i}].content holds U+E000/U+E001 (reserved for the mask markers)"
    return None


class ChatRecordReader(RecordReader):
    """RecordReader for chat records: the document text is the JSON of the messages (shown as
    such in removed_samples/); records that are not chats are rejected as `bad_record`."""

    name = "ChatRecords"

    def __init__(
        self, paths_file: str, cfg: ReadConfig, field: str, ledger: Ledger, rejects_dir: str
    ):
        super().__init__(paths_file, cfg, ledger, rejects_dir)
        self.field = field

    def _to_document(self, record: dict, filepath: str, lineno: int) -> Document | None:
        if self.field not in record:
            self._reject(filepath, lineno, "bad_record", f"no {self.field!r} field")
            return None
        messages = record.pop(self.field)
        if problem := message_problem(messages):
            self._reject(filepath, lineno, "bad_record", problem)
            return None
        slim = [{"role": m["role"], "content": m["content"]} for m in messages]
        record[self.cfg.text_field] = json.dumps(slim, ensure_ascii=False)
        return super()._to_document(record, filepath, lineno)


class MaskFile(MegatronTokenizedFile):
    """A Megatron indexed dataset of uint8 values (megatron's dtype code 1)."""

    def __init__(self, output_folder: str, filename: str):
        super().__init__(output_folder, filename, token_size=1)
        self.token_dtype, self.token_dtype_code = np.uint8, 1


class ChatShards(PipelineStep):
    """Render, tokenize and write each conversation with its loss mask (one shard per domain
    and task); removes conversations with a named reason."""

    name = "ChatShards"
    type = "TOKENIZER"

    def __init__(
        self,
        cfg: ChatTokenizeConfig,
        renderer: ChatRenderer,
        tokenizer_path: str,
        output_folder: str,
        info_folder: str,
        ledger: Ledger,
    ):
        super().__init__()
        self.cfg, self.ledger = cfg, ledger
        # the template is compiled again in the task (a compiled one does not pickle)
        self.template = (renderer.source, renderer.bos_token, renderer.eos_token)
        self.tokenizer_path = tokenizer_path
        self.output_folder, self.info_folder = output_folder, info_folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datatrove.utils.batching import batched

        self.renderer = ChatRenderer(*self.template)
        tok, eod, self.token_size = open_tokenizer(self.tokenizer_path, self.cfg.eod_token)
        self.eod, self.rank = eod, rank
        self.files: dict[str, tuple[MegatronTokenizedFile, MaskFile]] = {}
        self.info: dict[str, dict] = {}
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        for batch in batched(data, self.cfg.batch_size):
            rendered = [self._render(doc) for doc in batch]
            pieces = [text for segs in rendered if segs for text, _ in segs]
            encoded = iter(encode(pieces, add_special_tokens=False)) if pieces else iter(())
            for doc, segs in zip(batch, rendered, strict=True):
                if segs is None:
                    continue
                parts = [(next(encoded).ids, asst) for _, asst in segs]
                if self._write(doc, parts):
                    yield doc
        for files in self.files.values():
            for f in files:
                f.close()
        write_shard_info(self.info_folder, rank, eod, tok, self.token_size, self.info.values())

    def _remove(self, reason: str, doc: Document) -> None:
        self.ledger.remove(reason_key("chat_tokenize", reason), doc)

    def _render(self, doc: Document) -> list[tuple[str, bool]] | None:
        """The conversation's segments, or None (removed with its reason)."""
        from jinja2 import TemplateError as JinjaError

        messages = json.loads(doc.text)
        if not any(m["role"] == "assistant" for m in messages):
            self._remove("no_assistant_turn", doc)
            return None
        try:
            segs = self.renderer.segments(messages)
        except (JinjaError, TemplateError, TypeError, ValueError) as e:
            doc.metadata["template_error"] = _one_line(e)[:200]
            self._remove("template_error", doc)
            return None
        if not any(asst for _, asst in segs):
            self._remove("no_assistant_tokens", doc)
            return None
        return segs

    def _shard(self, domain: str) -> tuple[str, tuple[MegatronTokenizedFile, MaskFile]]:
        prefix = f"{_slug(domain)}_{self.rank:05d}"
        if prefix not in self.files:
            self.files[prefix] = (
                MegatronTokenizedFile(self.output_folder, prefix, token_size=self.token_size),
                MaskFile(self.output_folder, prefix + MASK_SUFFIX),
            )
            self.info[prefix] = {
                "prefix": prefix,
                "domain": domain,
                "documents": 0,
                "tokens": 0,
                "max_token_id": self.eod,
                "loss_mask": prefix + MASK_SUFFIX,
                "loss_tokens": 0,
                "max_document_tokens": 0,
            }
        return prefix, self.files[prefix]

    def _write(self, doc: Document, parts: list[tuple[list[int], bool]]) -> bool:
        ids = [i for p, _ in parts for i in p]
        mask = [int(asst) for p, asst in parts for _ in p]
        if len(ids) > self.cfg.seq_length + 1:
            doc.metadata["tokens"] = len(ids)
            self._remove("too_long", doc)
            return False
        if not any(mask):  # assistant blocks that tokenized to nothing
            self._remove("no_assistant_tokens", doc)
            return False
        prefix, (tokens, masks) = self._shard(doc.metadata.get("domain", "unknown"))
        tokens.write(ids)
        masks.write(mask)
        rec = self.info[prefix]
        rec["documents"] += 1
        rec["tokens"] += len(ids)
        rec["loss_tokens"] += sum(mask)
        rec["max_token_id"] = max(rec["max_token_id"], max(ids))
        rec["max_document_tokens"] = max(rec["max_document_tokens"], len(ids))
        self.ledger.count("loss_tokens", sum(mask))
        self.ledger.count("prompt_tokens", len(ids) - sum(mask))
        return True
