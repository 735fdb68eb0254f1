variable "name" {
  description = "Prefix for resource names (the cluster name)."
  type        = string
}

variable "coordinator_count" {
  description = "Coordinator hosts (each also an etcd member): 3 or 5."
  type        = number
}

variable "instance_type" {
  description = "Instance type of the coordinator hosts."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, one per zone; hosts are spread over them in order."
  type        = list(string)
}

variable "subnet_cidrs" {
  description = "Address ranges of subnet_ids, in the same order (fixed host addresses come from them)."
  type        = list(string)
}

variable "security_group_id" {
  description = "The coordinators' security group."
  type        = string
}

variable "instance_profile_name" {
  description = "The coordinators' instance profile."
  type        = string
}

variable "ami_id" {
  description = "AMI for the hosts; null picks the newest Canonical image matching ami_name_pattern."
  type        = string
  default     = null
}

variable "ami_name_pattern" {
  description = "Name filter for the Canonical Ubuntu image used when ami_id is null."
  type        = string
}

variable "root_volume_size" {
  description = "Root volume size in GiB (holds etcd's data)."
  type        = number
}

variable "termination_protection" {
  description = "Refuse API termination of coordinator hosts (turn off before terraform destroy)."
  type        = bool
}

variable "tags" {
  description = "Tags for the hosts and their volumes (besides Name and flotilla:role)."
  type        = map(string)
}

variable "ssh_key_name" {
  description = "EC2 key pair for SSH (Ansible); null for none."
  type        = string
  default     = null
}
