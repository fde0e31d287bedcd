"""Item -> chat prompt. The training instruction (`sip`) is SocialR1's model-card prompt (reason
inside think tags, answer inside Answer tags) extended with the four SIP stages, all taken from
`SIPFormat`. Evaluation can also ask with the card's instruction alone (`card`), for a reasoned
answer on a final `Answer: X` line (`cot`), or for the letter only (`direct`)."""

from typing import Literal, Sequence

from transformers import PreTrainedTokenizerBase

from socialr1.items import MCQItem
from socialr1.sip import SIPFormat


def instruction(fmt: SIPFormat) -> str:
    if fmt.instruction == "brief":
        return (
            f"Reason through the four stages of social information processing ({', '.join(fmt.stages)}) inside "
            f"{fmt.think_open} {fmt.think_close}, one line each, then give the option letter inside "
            f"{fmt.answer_open} {fmt.answer_close}."
        )
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


PromptMode = Literal["sip", "card", "cot", "direct"]

# The user instruction of the Jincenzi/SocialR1-4B and -8B model cards (Hugging Face, README "Usage"),
# verbatim, including its missing space after "answer.".
CARD = (
    "You should first think about the reasoning process in the mind and then provide with the answer."
    "The reasoning process and answer are enclosed within <think> </think> and <Answer> </Answer> tags, "
    "respectively."
)
COT = (
    "Think step by step about what each person in the story perceives, knows, believes, feels and "
    "wants, then end your reply with a last line of the form 'Answer: X', where X is the letter of "
    "the correct option."
)
DIRECT = "Reply with only the letter of the correct option, nothing else."


def mode_instruction(mode: PromptMode, fmt: SIPFormat) -> str:
    return {"sip": instruction(fmt), "card": CARD, "cot": COT, "direct": DIRECT}[mode]


def user_message(item: MCQItem, fmt: SIPFormat, mode: PromptMode = "sip") -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(item.letters, item.options))
    story = f"Story: {item.story}\n" if item.story else ""
    return f"{mode_instruction(mode, fmt)}\n\n{story}Question: {item.question}\nOptions:\n{options}"


def prompt_text(
    tokenizer: PreTrainedTokenizerBase, item: MCQItem, fmt: SIPFormat, mode: PromptMode = "sip", thinking: bool = True
) -> str:
    """The chat template's text; `thinking` is Qwen3's `enable_thinking` (off: the template writes an
    empty think block, so the model answers at once). Templates without the switch ignore it."""
    messages = [{"role": "user", "content": user_message(item, fmt, mode)}]
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[MCQItem],
    fmt: SIPFormat,
    mode: PromptMode = "sip",
    thinking: bool = True,
) -> list[list[int]]:
    """Token ids of every item's prompt, computed once when the data loads."""
    texts = [prompt_text(tokenizer, item, fmt, mode, thinking) for item in items]
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
