variable "name" {
  description = "Prefix for resource names (the cluster name)."
  type        = string
}

variable "vpc_cidr" {
  description = "The VPC's address range; subnets are /20s carved from it, so a /16 is expected."
  type        = string
}

variable "availability_zones" {
  description = "Zones to put one public and one private subnet in, in order."
  type        = list(string)
}

variable "enable_nat_gateway" {
  description = "Give private subnets a route to the internet through NAT (package installs, AWS APIs without interface endpoints)."
  type        = bool
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper) instead of one per zone (survives a zone outage)."
  type        = bool
}

variable "flow_log_retention_days" {
  description = "How long VPC flow logs are kept in CloudWatch Logs."
  type        = number
}
