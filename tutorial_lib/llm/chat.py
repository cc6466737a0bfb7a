"""A terminal chat with chapter 11's instruction-tuned GPT.

    python -m tutorial_lib.llm.chat [FOLDER] [--temperature 0.8] [--top-p 0.95]

``FOLDER`` is a model saved by chapter 11 (``pretraining.save_pretrained`` with the chat tokens
in its tokenizer); by default the one chapter 11 saved under the current profile
(``results/models/11_instruction_tuning.<profile>``). Replies stream token by token. The
conversation is kept inside the model's context by dropping its oldest exchanges, and the chat
says so when it does. ``/reset`` starts a new conversation, ``/quit``, Ctrl-D or Ctrl-C ends it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import runtime
from ..results import results_dir
from ..training.checkpoints import CheckpointError
from . import instruct, pretraining

CHAPTER = "11_instruction_tuning"


def default_folder(profile: str | None = None) -> Path:
    """Return where chapter 11 saves its chat model under ``profile`` (default: the current)."""
    return results_dir() / "models" / f"{CHAPTER}.{profile or runtime.get_profile()}"


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tutorial_lib.llm.chat", description=__doc__.splitlines()[0]
    )
    parser.add_argument("folder", nargs="?", help="a model folder saved by chapter 11")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 answers greedily")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling's mass")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest reply")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    args = parser.parse_args(argv)
    if args.temperature < 0:
        parser.error(f"--temperature must be ≥ 0 (0 is greedy), not {args.temperature}")
    if not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], not {args.top_p}")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}")
    return args


def _stream(pieces: list[int], tokenizer, printed: str) -> str:
    """Print what the reply's text has grown by since ``printed`` and return the new text; a
    byte-level token can end inside a character, which waits for the next token."""
    text = tokenizer.decode(pieces)
    if text.endswith("\ufffd"):
        return printed
    print(text[len(printed) :], end="", flush=True)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chat on standard input and output; return the exit status (0 when the reader
    ends it, 2 when the folder holds no chat model)."""
    args = _arguments(argv)
    try:
        folder = Path(args.folder) if args.folder else default_folder()
    except runtime.UnknownProfileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        model, tokenizer, info = pretraining.load_pretrained(folder)
    except FileNotFoundError as error:
        print(
            f"error: no saved model in {folder} ({error}). Run chapter 11 to save one, or name "
            "a folder it saved: python -m tutorial_lib.llm.chat FOLDER",
            file=sys.stderr,
        )
        return 2
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        special = instruct.chat_token_ids(tokenizer)
    except ValueError as error:
        print(
            f"error: the model in {folder} has no chat template ({error}). It is a base model "
            "(chapter 8 saves those); chat with the one chapter 11 saves",
            file=sys.stderr,
        )
        return 2
    if info.get("chat_template", instruct.CHAT_TEMPLATE) != instruct.CHAT_TEMPLATE:
        print(
            f"error: the model in {folder} was saved with another chat template than this "
            "version of tutorial_lib renders; run chapter 11 again to save it with this one",
            file=sys.stderr,
        )
        return 2
    context = model.config.context_length
    room = min(args.max_new_tokens, context // 2)
    generator = torch.Generator().manual_seed(args.seed)
    print(
        f"Chatting with {runtime.display_path(folder)}: a GPT of "
        f"{sum(p.numel() for p in model.parameters()):,} parameters and a context of {context} "
        "tokens. /reset starts over; /quit, Ctrl-D or Ctrl-C ends."
    )
    messages: list[dict[str, str]] = []
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                print()
                return 0
            text = line.strip()
            if not text:
                print("(an empty message: type something, /reset or /quit)")
                continue
            if text == "/quit":
                return 0
            if text == "/reset":
                messages = []
                print("(a new conversation)")
                continue
            if text.startswith("/"):
                print(f"(unknown command {text}: the commands are /reset and /quit)")
                continue
            try:
                kept, dropped = instruct.fit_to_context(
                    tokenizer, [*messages, {"role": "user", "content": text}], context, room
                )
            except ValueError as error:
                print(f"({error})")
                continue
            if dropped:
                print(
                    f"(the {dropped} oldest turns no longer fit the context of {context} tokens "
                    "and were dropped)"
                )
            prompt, _ = instruct.render_chat(tokenizer, kept, add_generation_prompt=True)
            print("bot> ", end="", flush=True)
            answer: list[int] = []
            printed = ""
            for token in instruct.stream_reply(
                model,
                prompt,
                special.end_of_turn,
                room,
                temperature=args.temperature,
                top_p=args.top_p if args.temperature > 0 else None,
                generator=generator,
            ):
                answer.append(token)
                printed = _stream(answer, tokenizer, printed)
            print(tokenizer.decode(answer)[len(printed) :])
            if len(answer) == room:
                print(f"(the reply was cut at {room} tokens; --max-new-tokens allows longer)")
            messages = [*kept, {"role": "assistant", "content": tokenizer.decode(answer)}]
    except KeyboardInterrupt:
        print()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
