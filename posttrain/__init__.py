"""Post-training after pretraining, DeepSeek-R1 style: a verifiable reasoning task
(`posttrain.tasks`), rule-based reward plugins (`posttrain.rewards`) and the GRPO loss math
(`posttrain.grpo_loss`). An app beside trainer and evaluation: it may import them (and
data_prep's leaf helpers), never pipeline or slurm."""
