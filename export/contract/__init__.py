"""The contract between the models, the orchestrator and the client; imports no torch.

media.py (rates, hops, mels, fps), presets.py (model dimensions), spec.py (the one I/O spec per
model), vocab.py / chat.py / text_frontend.py / g2p.py (text in and out of the models),
events.py (what the orchestrator streams), artifacts.py (what the export leaves beside the
orchestrator), layout.py (where things live in a checkout).
"""
