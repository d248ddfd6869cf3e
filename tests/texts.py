"""Texts for tokenizer round trips (shared by tools and tests): ASCII, digits, whitespace runs, code, unicode in
several scripts, emoji, contractions, and ChatML special tokens."""
TEXTS = (
    "Hello world",
    "What is the capital of France?",
    "  leading spaces and trailing   ",
    "Numbers: 1234567890, 3.14159, -42 and 1e-5; dates 2024-12-31.",
    "don't, I'll, they're, we've, she'd, it's, I'M SHOUTING, DON'T",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(3))",
    "tabs\tand\r\nwindows line ends\n",
    "Café crème brûlée, naïve façade, Ångström, Øre, Straße",
    "Привет, как дела? Ελληνικά. עברית. العربية",
    "日本語のテキストと中文文本，还有한국어.",
    "Emoji: 🙂🚀👍🏽 and flags 🇫🇷, ZWJ 👨‍👩‍👧",
    "Math ∑∫√∞ ≤ ≥ ≠ and symbols © ® ™ € £ ¥ § ¶ • … — –",
    "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|>",
    "<jupyter_code>x = 1<jupyter_output>",
    "URL https://example.com/path?q=1&r=two#frag and e-mail a.b@c.org",
    "½ ⅓ ² ³ ١٢٣ ४५६ — unicode digits",
    "    \n\n   \t  ",
    "a",
    "",
)
