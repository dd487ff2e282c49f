"""Worker pools on EC2 that follow the queue (issue 21 item 4): ``aws`` (the group and its launch
template, through boto3) and ``scaler`` (sizing from the queue, scale-in only of drained idle nodes)."""
