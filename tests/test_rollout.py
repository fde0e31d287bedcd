import torch

from socialr1.models import stop_token_ids
from socialr1.policy import Policy
from socialr1.prompts import encode_prompts
from socialr1.rollout import Rollout, pad_left, sample, stop_mask
from socialr1.sip import SIPFormat


def test_stop_mask_keeps_first_stop_token():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    assert stop_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_pad_left_and_rows_trim_shared_padding():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    comp = torch.tensor([[7, 2, 0], [8, 8, 2]])
    r = Rollout(ids, mask, comp, stop_mask(comp, [2]), torch.tensor([0, 1]))
    part = r.rows(1, 2)  # row 1: one prompt token, three completion tokens
    assert part.prompt_ids.tolist() == [[4]] and part.completion_ids.tolist() == [[8, 8, 2]]
    assert r.rows(0, 1).completion_ids.tolist() == [[7, 2]]


def test_training_logprobs_match_generation_with_left_padding(tokenizer, lm, items, world):
    """The training forward (kernel log-probs, explicit position ids) must score each sampled token
    exactly as the decoding forward that produced it did, padding and KV cache included."""
    lm.eval()
    prompts = encode_prompts(tokenizer, items[:3], SIPFormat())
    prompts[1] = prompts[1][:40]  # ragged lengths -> real left padding
    stops = stop_token_ids(tokenizer)
    torch.manual_seed(1)
    ids, mask = pad_left(prompts, tokenizer.pad_token_id)
    out = lm.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=True, top_k=0, top_p=1.0,
        temperature=1.0, cache_implementation="static", pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stops, output_logits=True, return_dict_in_generate=True,
    )
    gen_logp = torch.stack(out.logits, dim=1).log_softmax(-1)  # [N, C, V]
    comp = out.sequences[:, ids.shape[1]:]
    cmask = stop_mask(comp, stops)
    batch = Rollout(ids, mask, comp.masked_fill(cmask == 0, tokenizer.pad_token_id), cmask, torch.arange(3))
    logp, entropy = Policy(lm).logprobs(batch, temperature=1.0)
    expected = gen_logp.gather(-1, comp.unsqueeze(-1)).squeeze(-1) * cmask
    torch.testing.assert_close(logp, expected, atol=2e-4, rtol=1e-4)
    assert (entropy[cmask.bool()] > 0).all()


def test_sample_groups_rows_and_masks(tokenizer, lm, items, world):
    prompts = encode_prompts(tokenizer, items[:2], SIPFormat())
    stops = stop_token_ids(tokenizer)
    r = sample(lm, torch.device("cpu"), prompts, [5, 9], 3, 10, 1.0, 1.0, 0, tokenizer.pad_token_id, stops)
    assert r.item_index.tolist() == [5, 5, 5, 9, 9, 9]
    assert len(r) == 6 and r.completion_ids.shape[1] <= 10
    assert (r.completion_ids[r.completion_mask == 0] == tokenizer.pad_token_id).all()
    greedy = sample(lm, torch.device("cpu"), prompts, [0, 1], 2, 10, 0.0, 1.0, 0, tokenizer.pad_token_id, stops)
    assert torch.equal(greedy.completion_ids[0], greedy.completion_ids[1])
