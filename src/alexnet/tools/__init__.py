"""What users do with a trained net: load it (inference), predict, retrieve neighbours, export, import
torchvision's weights, draw figures, summarise, dry-run a training command."""
