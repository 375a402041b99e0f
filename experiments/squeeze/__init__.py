"""The squeeze-regime experiment (issue 16): find a setting where plain DPO squeezes, gate on it, then
compare DPO with DPO + logits-SAM there. See docs/design.md §6 and §9."""
