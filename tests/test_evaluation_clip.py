"""CLIP score on a tiny randomly initialised CLIP saved to a folder (no hub), against a direct computation."""

import json
import string

import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from apg.evaluation import clip_score
from apg.evaluation.files import save_png


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase:  # characters only, no merges: enough for a tokenizer that round-trips
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token="<|endoftext|>",
                              pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def direct_clip_score(folder, images, prompts):
    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output.double()
        text = model.get_text_features(input_ids=inputs["input_ids"],
                                       attention_mask=inputs["attention_mask"]).pooler_output.double()
    cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    return float((100 * cosine.clamp(min=0)).mean())


def test_clip_score_matches_direct_computation_and_reads_prompts_from_pngs(tiny_clip, tmp_path):
    rng = torch.Generator().manual_seed(1)
    images = [Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy())
              for _ in range(5)]
    prompts = ["a red cat", "a blue ship", "dog", "green frog on a leaf", "truck"]
    expected = direct_clip_score(tiny_clip, images, prompts)
    result = clip_score(images, prompts, clip_model=tiny_clip, batch_size=2, progress=False)
    assert result["clip_score"] == pytest.approx(expected, rel=1e-5) and result["count"] == 5
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        save_png(tmp_path / f"{i:06d}.png", image, {"apg": json.dumps({"index": i, "prompt": prompt})})
    from_folder = clip_score(tmp_path, clip_model=tiny_clip, progress=False)
    assert from_folder["clip_score"] == pytest.approx(expected, rel=1e-5)
    shuffled = clip_score(images, prompts[1:] + prompts[:1], clip_model=tiny_clip, progress=False)
    assert shuffled["clip_score"] != pytest.approx(expected, rel=1e-3)  # the pairing matters


def test_clip_score_errors(tiny_clip, tmp_path):
    image = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="one prompt per image \\(2\\), got 1"):
        clip_score([image, image], ["a"], clip_model=tiny_clip)
    save_png(tmp_path / "000000.png", image)
    with pytest.raises(ValueError, match="000000.png has no prompt"):
        clip_score(tmp_path, clip_model=tiny_clip)
    with pytest.raises(OSError, match="CLIP score needs the CLIP model .*--clip-model PATH"):
        clip_score([image], ["a"], clip_model=tmp_path / "no-such-model")
