"""A tiny real embedding model whose vectors can be reasoned about, built offline in the test session.

A sentence-transformers folder (modules.json: a BERT, mean pooling, Normalize)
around a BERT with no layers and hand-set word vectors: each word of CONCEPTS
stands for one concept, every word of a concept has the same vector, and all
other words are [UNK], whose vector is zero. So a text's embedding is the
normalized mean of its known words' concepts: "automobile maintenance" and
"fixing cars" point the same way, though they share no word (which lexical
search needs), and a text with no known word embeds to zero.

Each concept's vector is e(2i) - e(2i+1): zero mean and one norm for all, so
the embeddings' LayerNorm keeps its direction; position and token-type
embeddings are zero, so word order and position do not move it.
"""

from __future__ import annotations

from pathlib import Path

# concept -> its words (the tokenizer lower-cases and splits punctuation off).
CONCEPTS = {
    "car": ["car", "cars", "automobile", "automobiles", "vehicle", "vehicles"],
    "repair": ["repair", "repairs", "fixing", "fix", "maintenance", "mechanic"],
    "cooking": ["bread", "baking", "bake", "oven", "recipe", "flour"],
    "money": ["money", "budget", "salary", "savings", "finance"],
    "ocean": ["ocean", "sea", "marine", "whale", "whales"],
    "music": ["music", "guitar", "piano", "song", "melody"],
}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DIMENSIONS = 2 * len(CONCEPTS)


def build_tiny_embedder(folder: Path) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = [word for group in CONCEPTS.values() for word in group]
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    hf_tokenizer = BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=DIMENSIONS,
        num_hidden_layers=0,
        num_attention_heads=1,
        intermediate_size=DIMENSIONS,
        max_position_embeddings=128,
        pad_token_id=vocab["[PAD]"],
    )
    bert = BertModel(config, add_pooling_layer=False)
    with torch.no_grad():
        embeddings = bert.embeddings
        for table in (
            embeddings.word_embeddings,
            embeddings.position_embeddings,
            embeddings.token_type_embeddings,
        ):
            table.weight.zero_()
        for index, group in enumerate(CONCEPTS.values()):
            concept = torch.zeros(DIMENSIONS)
            concept[2 * index], concept[2 * index + 1] = 1.0, -1.0
            for word in group:
                embeddings.word_embeddings.weight[vocab[word]] = concept
    hf_folder = folder / "hf"
    bert.save_pretrained(hf_folder)
    hf_tokenizer.save_pretrained(hf_folder)
    model = SentenceTransformer(
        modules=[
            Transformer(str(hf_folder)),
            Pooling(DIMENSIONS, "mean"),
            Normalize(),
        ],
        device="cpu",
    )
    target = folder / "sentence-transformers"
    model.save(str(target))
    return target
