"""Expected renderings of the chat templates tailor serve recognises, made by the templates
themselves (transformers' Jinja environment, as apply_chat_template runs it).

usage: python scripts/ref/ref_chat.py    -> tests/fixtures/chat_templates.json

Templates: tests/fixtures/chat_templates/*.jinja, the families' published tokenizer.chat_template
(Qwen3-0.6B, Qwen2.5-7B-Instruct, Phi-3.5-mini-instruct, gemma-2-2b-it and
DeepSeek-R1-Distill-Qwen-32B as llama.cpp's models/templates keeps them; Phi-3-mini-128k-instruct,
phi-4 and Phi-4-mini-instruct transcribed from their model cards' tokenizer_config.json; the
R1 Llama distills carry the same text as the Qwen ones). Rendered with add_generation_prompt and
an empty bos_token (tailor's tokenizer adds BOS where the vocabulary asks for it). Each entry
names the template tailor should recognise; tests/server/test_server.c renders the same messages and
compares byte for byte.
"""
import json
import os

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DIR = os.path.join(ROOT, "tests", "fixtures", "chat_templates")

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi there \n"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
NO_SYSTEM = CHAT[1:]  # Gemma's template refuses a system role
REASONED = [CHAT[0], CHAT[1], {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"}, CHAT[3]]

CASES = [  # file, the template tailor recognises, messages
    ("Qwen-Qwen3-0.6B", "chatml", CHAT),
    ("Qwen-Qwen2.5-7B-Instruct", "chatml", CHAT),
    ("microsoft-Phi-3-mini-128k-instruct", "phi3", CHAT),
    ("microsoft-Phi-3.5-mini-instruct", "phi3", CHAT),
    ("microsoft-Phi-4-mini-instruct", "phi4-mini", CHAT),
    ("microsoft-phi-4", "phi4", CHAT),
    ("google-gemma-2-2b-it", "gemma", NO_SYSTEM),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "deepseek-r1", REASONED),
]


def main():
    out = []
    for name, kind, msgs in CASES:
        with open(os.path.join(DIR, name + ".jinja")) as f:
            tmpl = f.read()
        rendered, _ = render_jinja_template(conversations=[msgs], chat_template=tmpl, add_generation_prompt=True,
                                            bos_token="", eos_token="")
        out.append({"file": name + ".jinja", "template": kind, "messages": msgs, "expected": rendered[0]})
        print(f"{name}: {kind}, {len(rendered[0])} bytes")
    with open(os.path.join(ROOT, "tests", "fixtures", "chat_templates.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
