"""Model families. Importing this package registers every architecture."""

from . import (  # noqa: F401
    ct_fm,
    merlin,
    penet,
    pv_mvit,
    pv_resnet,
    pv_slowfast,
    pv_x3d,
    resnet2d,
    tv_mvit,
    tv_resnet3d,
    tv_s3d,
    tv_swin3d,
)
