"""Evaluation beside SPOL's own protocol (utils/method/boxes.py): wsolevaluation's (Choe et al., CVPR 2020)
score maps, MaxBoxAcc and PxAP as the stages run it (wsol_protocol.py); its metrics and its command line are the
tool utils/wsol_eval.py."""
