"""`python -m tutorial_lib.llm.chat`: driven through standard input, as a reader types."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT

from tutorial_lib.llm import bpe, chat, instruct, pretraining
from tutorial_lib.llm.gpt import GPT, GPTConfig

TEXTS = [
    "A wonderful film, the acting was great and I loved every minute of it.",
    "Terrible plot, bad acting; I want my two hours back. Avoid this movie.",
] * 10


def save_model(folder, with_chat_tokens: bool = True, context: int = 96, info=None):
    tokenizer = bpe.train_tokenizer(TEXTS, vocab_size=300)
    if with_chat_tokens:
        tokenizer = instruct.add_chat_tokens(tokenizer)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.get_vocab_size(),
        context_length=context,
        n_layer=1,
        n_head=2,
        n_embd=16,
    )
    model = GPT(config)
    pretraining.save_pretrained(folder, model, tokenizer, info)
    return model, tokenizer


def run_chat(monkeypatch, capsys, typed: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    status = chat.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_a_greedy_reply_is_the_models_reply_and_commands_work(tmp_path, monkeypatch, capsys):
    model, tokenizer = save_model(tmp_path / "model")
    typed = "hello there\n\n/help\n/reset\nhello there\n/quit\nnever read\n"
    args = (str(tmp_path / "model"), "--temperature", "0", "--max-new-tokens", "8")
    status, out, _ = run_chat(monkeypatch, capsys, typed, *args)
    assert status == 0
    expected, _ = instruct.reply(
        model, tokenizer, [{"role": "user", "content": "hello there"}], 8, temperature=0.0
    )
    replies = [line.split("bot> ", 1)[1] for line in out.splitlines() if "bot> " in line]
    assert replies == [expected, expected], "after /reset the same question gets the same reply"
    assert "(an empty message" in out
    assert "(unknown command /help" in out
    assert "(a new conversation)" in out


def test_old_turns_are_dropped_and_said_so_when_the_context_is_full(tmp_path, monkeypatch, capsys):
    save_model(tmp_path / "model", context=64)
    typed = "".join(f"message number {i} is rather long\n" for i in range(4))
    args = (str(tmp_path / "model"), "--max-new-tokens", "6")
    status, out, _ = run_chat(monkeypatch, capsys, typed, *args)
    assert status == 0
    assert "oldest turns no longer fit the context of 64 tokens" in out
    assert out.count("bot> ") == 4


def test_a_message_too_long_for_the_context_is_refused_and_the_chat_goes_on(
    tmp_path, monkeypatch, capsys
):
    save_model(tmp_path / "model", context=64)
    typed = "word " * 80 + "\nshort\n"
    status, out, _ = run_chat(monkeypatch, capsys, typed, str(tmp_path / "model"))
    assert status == 0
    assert "shorten it" in out and out.count("bot> ") == 1


def test_ctrl_d_and_ctrl_c_end_the_chat_cleanly(tmp_path, monkeypatch, capsys):
    save_model(tmp_path / "model")
    status, out, _ = run_chat(monkeypatch, capsys, "", str(tmp_path / "model"))
    assert status == 0 and out.endswith("you> \n")

    def interrupted(prompt: str = "") -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.input", interrupted)
    assert chat.main([str(tmp_path / "model")]) == 0


def test_a_folder_without_a_model_or_without_a_template_is_explained(tmp_path, monkeypatch, capsys):
    status, _, err = run_chat(monkeypatch, capsys, "hi\n", str(tmp_path / "missing"))
    assert status == 2 and "no saved model" in err and "chapter 11" in err
    save_model(tmp_path / "base", with_chat_tokens=False)
    status, _, err = run_chat(monkeypatch, capsys, "hi\n", str(tmp_path / "base"))
    assert status == 2 and "no chat template" in err and "base model" in err
    with pytest.raises(SystemExit):
        chat.main([str(tmp_path / "base"), "--top-p", "0"])


def test_the_module_runs_as_a_command(tmp_path):
    save_model(tmp_path / "model")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tutorial_lib.llm.chat",
            str(tmp_path / "model"),
            "--max-new-tokens",
            "4",
        ],
        input="hello\n/quit\n",
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Chatting with" in done.stdout and "bot> " in done.stdout


def test_a_cut_reply_is_announced(tmp_path, monkeypatch, capsys):
    save_model(tmp_path / "model")
    args = (str(tmp_path / "model"), "--temperature", "0", "--max-new-tokens", "2")
    status, out, _ = run_chat(monkeypatch, capsys, "hello\n", *args)
    assert status == 0 and "(the reply was cut at 2 tokens" in out


def test_another_template_or_an_unknown_profile_is_refused(tmp_path, monkeypatch, capsys):
    save_model(tmp_path / "model", info={"chat_template": "{{ messages }}"})
    status, _, err = run_chat(monkeypatch, capsys, "hi\n", str(tmp_path / "model"))
    assert status == 2 and "another chat template" in err
    monkeypatch.setenv("TUTORIAL_PROFILE", "huge")
    status, _, err = run_chat(monkeypatch, capsys, "hi\n")
    assert status == 2 and "huge" in err
