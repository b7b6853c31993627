"""The synthetic worlds of the image experiments, built because no pretrained vision model
ships offline: ``vision_shapes`` (shape scenes, questions about them, the hallucination
checker, a small encoder trained from scratch: the VLM experiment) and ``image_shapes``
(prompts "a {colour} {shape}", the black-box reward, a frozen feature network, base
generators: the Diffusion-DPO and DrPO experiments)."""
