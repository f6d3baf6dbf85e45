"""Special text tokens shared by the tokenizer, the sequence builder and the model."""

PAD = "<|pad|>"
EOT = "<|endoftext|>"
AUDIO_START, AUDIO_END = "<|audio_start|>", "<|audio_end|>"
SPEECH_START, SPEECH_END = "<|speech_start|>", "<|speech_end|>"
SPEECH_PROMPT_START, SPEECH_PROMPT_END = "<|speech_prompt_start|>", "<|speech_prompt_end|>"
VOICE_PROMPT_START, VOICE_PROMPT_END = "<|voice_prompt_start|>", "<|voice_prompt_end|>"
MUSIC_START, MUSIC_END = "<|music_start|>", "<|music_end|>"
VIDEO_START, VIDEO_END = "<|video_start|>", "<|video_end|>"
# Placeholders whose embeddings are replaced by codec-frame / vision embeddings.
AUDIO_PAD = "<|audio_pad|>"
VIDEO_PAD = "<|video_pad|>"

SPECIAL_TOKENS: list[str] = [
    PAD, EOT,
    AUDIO_START, AUDIO_END, SPEECH_START, SPEECH_END, SPEECH_PROMPT_START, SPEECH_PROMPT_END,
    VOICE_PROMPT_START, VOICE_PROMPT_END, MUSIC_START, MUSIC_END, VIDEO_START, VIDEO_END,
    AUDIO_PAD, VIDEO_PAD,
]
