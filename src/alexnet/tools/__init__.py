"""What users do with a trained net: load it (inference), predict, retrieve neighbours, export, import
torchvision's weights, summarise, dry-run a training command, and the steps of the demo."""
