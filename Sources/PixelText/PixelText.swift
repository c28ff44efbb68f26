// PixelText: tokenizers and conversation templates, no dependencies beyond Foundation.
//
// - `Tokenizer` (Tokenizer.swift): the facade the rest of pixellm uses (a checkpoint's tokenizer directory,
//   PixelLM's special ids, encode/decode in `.reference` = transformers 4.31 slow LlamaTokenizer or `.hfFast`).
// - `HFTokenizer` + `BPEModel`: tokenizer.json as HF tokenizers runs it.
// - `SentencePieceModel`: tokenizer.model (protobuf parsed here) as the sentencepiece library runs it.
// - `Conversation`, `PixelLMPrompt`, `ConversationLabels` (Conversation.swift): llava_v1 prompts,
//   tokenizer_image_token and the training label masking of utils/dataset.py.
// Fixtures and their generator: Tests/PixelTextTests/Fixtures, tools/fixtures/tokenizers.py.
