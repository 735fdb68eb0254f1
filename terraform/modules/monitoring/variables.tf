variable "name" {
  description = "Prefix for resource names (the cluster name)."
  type        = string
}

variable "instance_type" {
  description = "Instance type of the monitoring host."
  type        = string
}

variable "subnet_id" {
  description = "Private subnet of the monitoring host."
  type        = string
}

variable "security_group_id" {
  description = "The monitoring host's security group."
  type        = string
}

variable "instance_profile_name" {
  description = "The monitoring host's instance profile (EC2 discovery)."
  type        = string
}

variable "ami_id" {
  description = "AMI for the host; null picks the newest Canonical image matching ami_name_pattern."
  type        = string
  default     = null
}

variable "ami_name_pattern" {
  description = "Name filter for the Canonical Ubuntu image used when ami_id is null."
  type        = string
}

variable "root_volume_size" {
  description = "Root volume size in GiB (holds Prometheus's time series)."
  type        = number
}

variable "ssh_key_name" {
  description = "EC2 key pair for SSH (Ansible); null for none."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for the host and its volume (besides Name and flotilla:role)."
  type        = map(string)
}
