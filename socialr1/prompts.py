"""Item -> chat prompt. The instruction is SocialR1's model-card prompt (reason inside think tags,
answer inside Answer tags) extended with the four SIP stages, all taken from `SIPFormat`."""

from typing import Sequence

from transformers import PreTrainedTokenizerBase

from socialr1.items import MCQItem
from socialr1.sip import SIPFormat


def instruction(fmt: SIPFormat) -> str:
    stages = "\n".join(
        f"{i + 1}. {fmt.stage_header(i)} {hint}" for i, hint in enumerate(fmt.stage_hints)
    )
    return (
        "You should first think about the reasoning process in the mind and then provide the "
        f"answer. The reasoning process and answer are enclosed within {fmt.think_open} "
        f"{fmt.think_close} and {fmt.answer_open} {fmt.answer_close} tags, respectively.\n"
        "Reason through the four stages of social information processing, in this order, each "
        "on its own line starting with its name:\n"
        f"{stages}\n"
        f"Then give only the letter of the chosen option, e.g. {fmt.answer_open}A{fmt.answer_close}."
    )


def user_message(item: MCQItem, fmt: SIPFormat) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(item.letters, item.options))
    return (
        f"{instruction(fmt)}\n\nStory: {item.story}\nQuestion: {item.question}\n"
        f"Options:\n{options}"
    )


def prompt_text(tokenizer: PreTrainedTokenizerBase, item: MCQItem, fmt: SIPFormat) -> str:
    messages = [{"role": "user", "content": user_message(item, fmt)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, items: Sequence[MCQItem], fmt: SIPFormat
) -> list[list[int]]:
    """Token ids of every item's prompt, computed once when the data loads."""
    texts = [prompt_text(tokenizer, item, fmt) for item in items]
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def prefilled(tokenizer: PreTrainedTokenizerBase, fmt: SIPFormat) -> str:
    """The part of the completion that the chat template's generation prompt already writes: from
    an opening think tag on (e.g. "<think>\n", as Qwen3 Thinking-2507 and R1-distilled templates
    do), '' when the template leaves the think block to the model. The reward scores completions
    as continuing it, as the model sees them."""
    messages = [{"role": "user", "content": "?"}]
    bare = tokenizer.apply_chat_template(messages, tokenize=False)
    generation = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    opened = generation.removeprefix(bare).rpartition(fmt.think_open)
    return opened[1] + opened[2] if opened[1] and fmt.think_close not in opened[2] else ""
